"""`dataset`: verified letters + their gold -> chat-format SFT examples per split.

Specs (split, patient, gold) and letters are streamed together in spec order: spec j's letter is the
next line of letter shard j mod N, so memory stays flat at paper scale (75k letters). The split is the
sample stage's patient-level split, checked here (one split per patient). Letters that failed
verification are left out unless dataset.include_failed; examples longer than dataset.max_tokens
(prompt + answer, with dataset.model's tokenizer and chat template) are dropped and counted. Tokens are
counted in batches (the fast tokenizer encodes a batch in parallel).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from clinsynth.artifacts.checks import upstream_error
from clinsynth.artifacts.letters import check_letters, read_letters
from clinsynth.artifacts.sft import LENGTHS_PNG, sft_path, stats_path
from clinsynth.artifacts.specs import check_specs, iter_specs, specs_path
from clinsynth.artifacts.verdicts import read_verdicts, verdicts_path
from clinsynth.core.atomic import atomic_open, write_json
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.training.answer import canonical_answer
from clinsynth.training.chat import PROMPT_VERSION, TemplateError, example_messages, tokenize_examples
from clinsynth.training.config import DatasetConfig

#: letters tokenised per batch (one encode each; the first of a batch is also held to the strict prefix rule)
BATCH = 256
PERCENTILES = (50, 90, 95, 99)


def _requires(cfg: DatasetConfig) -> list[tuple[str, str]]:
    """Checked at plan time: the tokenizer needs transformers; a packaged model's GGUF needs gguf and
    the package that ships it (installed --no-deps, never imported)."""
    needs = [("transformers", "train"), ("matplotlib", "train")]
    model = cfg.dataset.model
    if model.kind == "tiny":
        needs.append(("tokenizers", "hf"))
    if model.kind == "packaged":
        needs.append(("gguf", "train"))
    return needs


@stage(
    "dataset",
    needs=("verify", "generate", "sample"),
    config=DatasetConfig,
    version=PROMPT_VERSION,  # a new prompt wording is a new dataset (and a new stage id downstream)
    requires=_requires,
)
def run(cfg: DatasetConfig, ctx: StageContext) -> dict[str, Any]:
    """SFT examples per split (sft/<split>.jsonl), stats.json, lengths.png."""
    from clinsynth.llm.weights import load_tokenizer

    ds = cfg.dataset
    sample_dir = ctx.input_dir("sample")
    gen_dir = ctx.input_dir("generate")
    verify_dir = ctx.input_dir("verify")
    total = check_specs(sample_dir, stage="dataset")
    shards = check_letters(gen_dir, total, stage="dataset")
    use = _verdicts(verify_dir, total)
    if ctx.cache_dir is None:
        raise RuntimeError(
            "dataset needs ctx.cache_dir (the runs folder's cache) to build or find the tokenizer"
        )
    tokenizer = load_tokenizer(ds.model.model_dump(), ctx.cache_dir)
    t0 = time.perf_counter()
    splits = list(dict.fromkeys(ds.splits))
    stats = {s: _SplitStats() for s in splits}
    patient_split: dict[str, str] = {}
    other_splits: Counter[str] = Counter()
    pending: list[dict[str, Any]] = []
    done = 0

    with contextlib.ExitStack() as stack:
        out: dict[str, IO[bytes]] = {
            s: stack.enter_context(atomic_open(sft_path(ctx.stage_dir, s), "wb")) for s in splits
        }

        def flush() -> None:
            convs = [p["messages"] for p in pending]
            try:
                encoded = tokenize_examples(tokenizer, convs, exact_every=BATCH)
            except TemplateError as exc:
                ids = [p["id"] for p in pending]
                raise RuntimeError(
                    f"dataset: the chat template of dataset.model {ds.model.name!r} cannot label a batch of "
                    f"{len(ids)} letters ({ids[0]} ... {ids[-1]}): {exc}"
                ) from exc
            for row, ex in zip(pending, encoded, strict=True):
                st = stats[row["split"]]
                assert ex is not None  # no max_tokens given: every example comes back
                if ex.n_tokens > ds.max_tokens:  # the rule: prompt + answer + end of turn over the limit
                    st.dropped_too_long += 1
                    st.dropped_lengths.append(ex.n_tokens)
                    continue
                row.update(n_tokens=ex.n_tokens, n_prompt=ex.n_prompt, n_answer=ex.n_answer)
                st.add(ex.n_tokens, ex.n_prompt, ex.n_answer)
                out[row["split"]].write(orjson.dumps(row) + b"\n")
            pending.clear()

        for spec, letter, where in _pairs(sample_dir, shards, total):
            sid, pid, split = spec["spec_id"], spec["patient_id"], spec["split"]
            if letter.get("spec_id") != sid:
                raise RuntimeError(
                    f"{where}: letter {letter.get('spec_id')!r} where spec {sid!r} was expected (shard "
                    "order); letters and specs come from different runs: delete the generate stage folder "
                    "and relaunch"
                )
            if letter.get("split") not in (None, split):
                raise RuntimeError(
                    f"{where}: letter {sid!r} says split {letter.get('split')!r}, its spec {split!r}"
                )
            if patient_split.setdefault(pid, split) != split:
                raise upstream_error(
                    "dataset", "sample", sample_dir, f"split of patient {pid!r} in {specs_path(sample_dir)}",
                    "one split per patient", f"{patient_split[pid]!r} and {split!r}",
                )  # fmt: skip
            done += 1
            ctx.progress(done, total, "letters")
            if split not in stats:
                other_splits[split] += 1
            elif not use[sid] and not ds.include_failed:
                stats[split].excluded_failed += 1
            else:
                if not isinstance(letter.get("text"), str) or not letter["text"].strip():
                    raise RuntimeError(f"{where}: letter {sid!r} has no text")
                try:
                    answer = canonical_answer(orjson.loads(spec["gold"]))
                except Exception as exc:
                    raise RuntimeError(
                        f"{specs_path(sample_dir)}: spec {sid!r}: its gold is not a schema-v2 extraction "
                        f"({exc}); delete the sample stage folder and relaunch"
                    ) from exc
                msgs = example_messages(letter["text"], answer, schema_in_prompt=ds.schema_in_prompt)
                pending.append({"id": sid, "patient_id": pid, "split": split, "messages": msgs})
                if len(pending) >= BATCH:
                    flush()
        flush()

    seconds = time.perf_counter() - t0
    if "train" in stats and stats["train"].examples == 0:
        st = stats["train"]
        raise RuntimeError(
            f"dataset: the train split has no examples ({done} letters read: {st.excluded_failed} failed "
            f"verification, {st.dropped_too_long} longer than dataset.max_tokens={ds.max_tokens}, "
            f"{sum(stats[s].examples for s in stats)} in the other splits): raise dataset.max_tokens (and "
            "train.max_seq_len), set dataset.include_failed=true, or sample more patients"
        )
    report = {
        "letters": done,
        "splits": {s: st.summary() for s, st in stats.items()},
        "examples": sum(st.examples for st in stats.values()),
        "excluded_failed": sum(st.excluded_failed for st in stats.values()),
        "dropped_too_long": sum(st.dropped_too_long for st in stats.values()),
        "not_in_splits": dict(other_splits),
        "include_failed": ds.include_failed,
        "max_tokens": ds.max_tokens,
        "schema_in_prompt": ds.schema_in_prompt,
        "prompt_version": PROMPT_VERSION,
        "tokenizer": _tokenizer_name(ds.model.model_dump(), tokenizer),
    }
    # timings go to the task record, not stats.json: a rerun's stats are byte-identical
    timing = {"seconds": round(seconds, 3), "letters_per_s": round(done / seconds, 1) if seconds else None}
    ctx.timing(**timing)
    write_json(stats_path(ctx.stage_dir), report)
    _plot(ctx.stage_dir / LENGTHS_PNG, {s: st.lengths for s, st in stats.items()}, ds.max_tokens)
    ctx.tracker.log({f"dataset/{s}_examples": st.examples for s, st in stats.items()})
    ctx.logger.info(
        "dataset: %d examples (%s), %d failing letters left out, %d too long; %.0f letters/s",
        report["examples"],
        ", ".join(f"{s} {st.examples}" for s, st in stats.items()),
        report["excluded_failed"],
        report["dropped_too_long"],
        timing["letters_per_s"] or 0,
    )
    return {**{k: report[k] for k in ("examples", "excluded_failed", "dropped_too_long")}, **timing}


class _SplitStats:
    def __init__(self) -> None:
        self.examples = self.excluded_failed = self.dropped_too_long = 0
        self.tokens = self.prompt = self.answer = 0
        self.lengths: list[int] = []
        self.dropped_lengths: list[int] = []

    def add(self, n: int, n_prompt: int, n_answer: int) -> None:
        self.examples += 1
        self.tokens += n
        self.prompt += n_prompt
        self.answer += n_answer
        self.lengths.append(n)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        lengths = np.asarray(self.lengths)
        pct = (
            {f"p{p}": int(np.percentile(lengths, p, method="higher")) for p in PERCENTILES}
            | {"min": int(lengths.min()), "max": int(lengths.max()), "mean": round(float(lengths.mean()), 1)}
            if len(lengths)
            else {}
        )
        return {
            "examples": self.examples,
            "excluded_failed": self.excluded_failed,
            "dropped_too_long": self.dropped_too_long,
            "tokens": {"total": self.tokens, "prompt": self.prompt, "answer": self.answer},
            "length": pct,
            # how far over the limit the dropped ones were (raise max_tokens, or shorten letters)
            "dropped_length": (
                {"min": min(self.dropped_lengths), "max": max(self.dropped_lengths)}
                if self.dropped_lengths
                else {}
            ),
        }


def _verdicts(verify_dir: Path, total: int) -> dict[str, bool]:
    """spec_id -> use_for_training; every spec has exactly one verdict (else nothing is written)."""
    path = verdicts_path(verify_dir)
    if not path.is_file():
        raise upstream_error(
            "dataset", "verify", verify_dir, "the verdicts", f"the file {path}", "no such file"
        )
    use: dict[str, bool] = {}
    for line_no, v in enumerate(read_verdicts(verify_dir), 1):
        if not isinstance(v, dict) or not isinstance(v.get("spec_id"), str) or "use_for_training" not in v:
            raise RuntimeError(f"{path}:{line_no}: not a verdict (needs spec_id and use_for_training)")
        if v["spec_id"] in use:
            raise RuntimeError(f"{path}:{line_no}: a second verdict for {v['spec_id']!r}")
        use[v["spec_id"]] = bool(v["use_for_training"])
    if len(use) != total:
        raise upstream_error(
            "dataset", "verify", verify_dir, f"verdicts in {path}", f"{total} (one per spec)", len(use)
        )
    return use


def _pairs(
    sample_dir: Path, shards: list[tuple[int, int, Path]], total: int
) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    """(spec row, letter, "file:line" of the letter) in spec order: spec j is line j // N + 1 of shard
    j mod N."""
    columns = ["spec_id", "patient_id", "split", "gold"]
    letters = [read_letters(path) for _, _, path in shards]  # one open reader per shard, in step
    n = len(letters)
    j = -1
    for j, spec in enumerate(iter_specs(sample_dir, columns)):
        where = f"{shards[j % n][2]}:{j // n + 1}"
        try:
            letter = next(letters[j % n])
        except orjson.JSONDecodeError as exc:
            raise RuntimeError(
                f"{where}: not a JSON letter ({exc}); delete the generate stage folder and relaunch"
            ) from exc
        except StopIteration:
            raise upstream_error(
                "dataset", "generate", shards[j % n][2], "letters", f"a line {where}", "none"
            ) from None
        if not isinstance(letter, dict):
            raise RuntimeError(f"{where}: not a letter record")
        for key in columns[:3]:
            if not isinstance(spec.get(key), str):
                raise RuntimeError(f"{specs_path(sample_dir)}: row {j}: {key} is {spec.get(key)!r}")
        yield spec, letter, where
    if j + 1 != total:
        raise upstream_error(
            "dataset", "sample", sample_dir, f"rows of {specs_path(sample_dir)}", total, j + 1
        )


def _tokenizer_name(model_cfg: dict[str, Any], tokenizer: Any) -> str:
    """The model's config name and the tokenizer class (the folder path is a cache detail)."""
    return f"{model_cfg.get('name')} ({type(tokenizer).__name__}, vocab {len(tokenizer)})"


def _plot(path: Path, lengths: dict[str, list[int]], max_tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(lengths), 1, figsize=(7, 2.2 * len(lengths)), sharex=True, squeeze=False)
    for ax, (split, values) in zip(axes[:, 0], lengths.items(), strict=True):
        if values:
            ax.hist(values, bins=50, color="tab:blue")
        ax.axvline(max_tokens, color="tab:red", linestyle="--", label=f"max_tokens {max_tokens}")
        ax.set_title(f"{split}: {len(values)} examples", fontsize=9)
        ax.set_ylabel("examples")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("tokens per example (prompt + answer)")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
