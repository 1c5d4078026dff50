"""Content addresses for stages and runs (dora-style signatures).

stage id = hash(stage name, stage version, the config keys the stage reads, its shard
count, the ids of the stages it needs) -> two runs that differ only downstream share
their upstream stage folders. run id = hash(the semantic config delta from the
defaults) -> rerunning a command resumes its run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

ID_LEN = 12


def digest(obj: Any) -> str:
    blob = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()[:ID_LEN]


def pick(plain: dict[str, Any], dotted: str) -> Any:
    """Value at a dotted key, or None when absent (absence is part of the identity)."""
    node: Any = plain
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def stage_inputs(plain: dict[str, Any], reads: tuple[str, ...]) -> dict[str, Any]:
    return {key: pick(plain, key) for key in reads}


def stage_id(name: str, version: int, reads: dict[str, Any], shards: int, needs: dict[str, str]) -> str:
    return digest({"stage": name, "version": version, "reads": reads, "shards": shards, "needs": needs})


def run_id(semantic_delta: dict[str, Any]) -> str:
    return digest(semantic_delta)
