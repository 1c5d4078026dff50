"""Batches for the train stage: right-padded, or packed rows without attention across examples.

Packing puts several tokenized examples into one row of at most `max_len` tokens. The row carries
`position_ids` that restart at 0 for every example and NO `attention_mask`: transformers (>= 4.56,
checked in 5.19's `masking_utils.find_packed_sequence_indices`) then reads the example boundaries from
the position ids and builds a block-diagonal causal mask for sdpa, eager and flex attention; the flash
attention kernels read the same position ids as varlen boundaries, but only for a batch of ONE row
(`modeling_flash_attention_utils._is_packed_sequence`), so for them the collator flattens the micro-batch
into one row. The detection is skipped when a KV cache is passed (`use_cache=True` builds one inside
the forward), so a packed forward with the cache on attends across examples: `packing_mode` says
"padded" then, and the caller falls back to `PaddedCollator`.

Labels are -100 at each example's first token, so the last token of one example never predicts the
first token of the next. Packing order is deterministic (in-order first-fit), so a resumed run builds
the same rows.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
#: attention implementations whose mask comes from transformers' masking_utils (packed-sequence aware)
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")
#: attention implementations that read packed boundaries from position_ids (varlen), batch of one row only
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def _ids_labels(example: Any, where: str) -> tuple[list[int], list[int]]:
    """input_ids and labels of a TokenizedExample, a dict row, or a pre-packed row."""
    if isinstance(example, Mapping):
        ids, labels = example.get("input_ids"), example.get("labels")
    else:
        ids, labels = getattr(example, "input_ids", None), getattr(example, "labels", None)
    if ids is None or labels is None:
        raise ValueError(f"{where}: needs input_ids and labels (a TokenizedExample or a dict with both)")
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(ids) != len(labels):
        raise ValueError(
            f"{where}: {len(ids)} input_ids but {len(labels)} labels; tokenize_example keeps them equal"
        )
    if len(ids) < 2:
        raise ValueError(f"{where}: {len(ids)} token(s); an example needs 2 or more for a next-token target")
    return ids, labels


def _length(example: Any, where: str) -> int:
    if isinstance(example, int):
        if example < 1:
            raise ValueError(f"{where}: length {example} < 1")
        return example
    return len(_ids_labels(example, where)[0])


def pad_batch(examples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids (pad_id), labels (-100 at padding), attention_mask (0 at padding).

    Padding is found by the attention mask, never by the pad id (SmolLM2: pad == eos)."""
    if not examples:
        raise ValueError("pad_batch: no examples")
    pairs = [_ids_labels(ex, f"example {i}") for i, ex in enumerate(examples)]
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


class _FirstFit:
    """Segment tree over the rows' free space: the leftmost row with room in O(log rows)."""

    def __init__(self, capacity: int, max_rows: int) -> None:
        self.capacity = capacity
        self.size = 1
        while self.size < max(1, max_rows):
            self.size *= 2
        self.free = [capacity] * (2 * self.size)  # unopened rows have full capacity

    def take(self, need: int) -> int:
        """Index of the leftmost row with at least `need` free tokens; its free space shrinks by `need`."""
        node = 1
        while node < self.size:
            node = 2 * node if self.free[2 * node] >= need else 2 * node + 1
        row = node - self.size
        self.free[node] -= need
        node //= 2
        while node:
            self.free[node] = max(self.free[2 * node], self.free[2 * node + 1])
            node //= 2
        return row


def pack_rows(examples: Sequence[Any], max_len: int) -> list[list[int]]:
    """Indices of the examples in each packed row: in-order first-fit, deterministic.

    Each example goes into the first row (in order of creation) with room for it, else a new row; rows
    list their examples in dataset order. An example is never split: one longer than max_len is an
    error. `examples` may be lengths (ints) or examples with input_ids."""
    if max_len < 2:
        raise ValueError(f"pack_rows: max_len {max_len} < 2")
    lengths = [_length(ex, f"example {i}") for i, ex in enumerate(examples)]
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(
                f"example {i} has {n} tokens, more than the packed row length {max_len}: drop it in the "
                f"dataset stage (dataset.max_tokens <= train.max_seq_len) or raise train.max_seq_len"
            )
    tree = _FirstFit(max_len, len(lengths))
    rows: list[list[int]] = []
    for i, n in enumerate(lengths):
        row = tree.take(n)
        if row == len(rows):
            rows.append([])
        rows[row].append(i)
    return rows


def pack_examples(examples: Sequence[Any], max_len: int) -> list[dict[str, Any]]:
    """Packed rows as dicts (input_ids, labels, position_ids, n_examples), ready for PackedCollator.

    For a dataset of rows (pack once, then batch rows); the order is pack_rows'."""
    out: list[dict[str, Any]] = []
    for idx in pack_rows(examples, max_len):
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in idx:
            e_ids, e_labels = _ids_labels(examples[i], f"example {i}")
            ids += e_ids
            labels += [IGNORE_INDEX, *e_labels[1:]]  # no prediction across the boundary
            pos += range(len(e_ids))
        out.append({"input_ids": ids, "labels": labels, "position_ids": pos, "n_examples": len(idx)})
    return out


def _is_packed_row(feature: Any) -> bool:
    return isinstance(feature, Mapping) and "position_ids" in feature


class PackedCollator:
    """Collates examples (packed here, in order, into rows of max_len) or pre-packed rows (pack_examples).

    Rows are right-padded to the longest row; the padding tokens get position id 0 each, so every pad
    token is its own one-token "sequence" that no real token attends to, and labels -100. With
    `flatten=True` (flash attention) all rows become one row of batch 1 and there is no padding."""

    def __init__(self, pad_id: int, max_len: int, *, flatten: bool = False) -> None:
        self.pad_id = pad_id
        self.max_len = max_len
        self.flatten = flatten

    def rows(self, features: Sequence[Any]) -> list[dict[str, list[int]]]:
        if all(_is_packed_row(f) for f in features):
            rows = []
            for i, f in enumerate(features):
                ids, labels = _ids_labels(f, f"packed row {i}")
                pos = list(f["position_ids"])
                if len(pos) != len(ids) or pos[0] != 0:
                    raise ValueError(f"packed row {i}: position_ids must start at 0 and match input_ids")
                rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
            return rows
        if any(_is_packed_row(f) for f in features):
            raise ValueError("PackedCollator: a batch mixes packed rows (position_ids) and plain examples")
        return pack_examples(features, self.max_len)

    def __call__(self, features: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("PackedCollator: no examples")
        rows = self.rows(features)
        if self.flatten:
            rows = [{k: [t for r in rows for t in r[k]] for k in ("input_ids", "labels", "position_ids")}]
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
            pos[i, :n] = torch.tensor(r["position_ids"], dtype=torch.long)
        return {"input_ids": input_ids, "labels": labels, "position_ids": pos}


@dataclass
class PaddedCollator:
    """Right-padded batches with an attention mask: the fallback where packing is not exact."""

    pad_id: int

    def __call__(self, features: Sequence[Any]) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.pad_id)


def useful_tokens(batch: Mapping[str, Any]) -> int:
    """Real (non-padding) tokens in a batch from PaddedCollator, PackedCollator or pad_batch.

    Padded: the attention mask. Packed: a pad token is a position-0 token not followed by position 1
    (every real example has >= 2 tokens and starts 0, 1, ...)."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    pos = batch.get("position_ids")
    ids = batch["input_ids"]
    if pos is None:
        return int(ids.numel())
    zero = pos == 0
    followed = torch.zeros_like(zero)
    followed[:, :-1] = pos[:, 1:] == 1
    return int((~zero).sum() + (zero & followed).sum())


def _base_model(model: Any) -> Any:
    """The transformers model under peft / DeepSpeed / DDP wrappers."""
    from transformers import PreTrainedModel

    for _ in range(8):
        if isinstance(model, PreTrainedModel):
            break
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            break
    return model


def packing_mode(model: Any) -> str:
    """"position_ids" where a packed row is exact for this model, else "padded" (with the reason logged).

    Exact needs: the model's modeling code builds its masks with transformers.masking_utils (it
    imports create_causal_mask), an attention implementation whose mask or varlen kernel honours
    packed position ids, and `config.use_cache` False (the HF Trainer sets it from
    TrainingArguments.use_cache, default False; a custom loop must set it)."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    if config is None:
        log.warning("packing off: %s has no config", type(base).__name__)
        return "padded"
    attn = getattr(config, "_attn_implementation", None) or "eager"
    module = sys.modules.get(type(base).__module__)
    uses_masking_utils = module is not None and hasattr(module, "create_causal_mask")
    reason = None
    if not uses_masking_utils:
        reason = f"{type(base).__name__} does not build its mask with transformers.masking_utils"
    elif attn not in MASKED_ATTENTION + VARLEN_ATTENTION:
        reason = f"attention implementation {attn!r} does not read packed position ids"
    elif getattr(config, "use_cache", False):
        reason = "config.use_cache is True: the forward builds a KV cache, then ignores packed position ids"
    if reason:
        log.warning("packing off, padded batches instead: %s", reason)
        return "padded"
    return "position_ids"


def needs_flattening(model: Any) -> bool:
    """Flash-attention kernels see packed boundaries only in a batch of one row."""
    config = getattr(_base_model(model), "config", None)
    return getattr(config, "_attn_implementation", None) in VARLEN_ATTENTION


def make_collator(model: Any, *, packing: bool, pad_id: int, max_len: int) -> tuple[Any, str]:
    """The collator for this model and setting, and the packing mode to report (train_report.json)."""
    if packing and packing_mode(model) == "position_ids":
        return PackedCollator(pad_id, max_len, flatten=needs_flattening(model)), "position_ids"
    return PaddedCollator(pad_id), "padded"
