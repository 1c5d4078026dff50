"""The extract stage's config: each extractor gets what it needs and nothing it ignores enters its id;
every shipped preset validates; the stage needs what the extractor reads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from clinsynth.core.config import identity_view
from clinsynth.stages import extract
from launchers.plan import PlanError, stage_config

REPO = Path(__file__).resolve().parents[2]


def test_the_fine_tuned_extractor_runs_the_train_model() -> None:
    cfg = stage_config("extract", ["extract/extractor=finetuned", "train/model=tiny"])
    assert (
        cfg.extract.llm_model is not None
        and cfg.extract.llm_model.name == "tiny"
        and cfg.extract.model is None
    )
    assert cfg.extract.backend is not None and cfg.extract.backend.structured_outputs_backend == "guidance"
    with pytest.raises(PlanError, match=r"extract\.model is the one-shot model"):
        stage_config("extract", ["extract/extractor=finetuned", "extract/model=qwen3_8b"])


def test_one_shot_without_a_model_and_nothing_to_read_are_refused() -> None:
    with pytest.raises(PlanError, match="extractor oneshot needs a model"):
        stage_config("extract", ["extract/extractor=oneshot"])
    with pytest.raises(PlanError, match="nothing to extract"):
        stage_config(
            "extract", ["extract/extractor=rules", "extract.test_letters=false", "extract.dev_letters=false"]
        )


def test_what_rules_ignore_stays_out_of_their_stage_id() -> None:
    a = stage_config("extract", ["extract/extractor=rules"])
    b = stage_config("extract", ["extract/extractor=rules", "extract/backend=hf", "extract.max_tokens=7"])
    assert identity_view(a) == identity_view(b) and a.extract.backend is None and a.extract.sampling is None
    c = stage_config("extract", ["extract/extractor=rules", "extract.ground=true"])
    assert identity_view(c) != identity_view(a)
    # operational: the chunk size never reruns anything
    d = stage_config("extract", ["extract/extractor=rules", "extract.chunk=3"])
    assert identity_view(d) == identity_view(a)


def test_the_grounding_method_is_typed_and_part_of_the_stage_id() -> None:
    a = stage_config("extract", ["extract/extractor=rules", "extract.ground=true"])
    assert a.extract.ground_method == "rapidfuzz" and a.extract.ground_threshold is None  # the default
    b = stage_config(
        "extract", ["extract/extractor=rules", "extract.ground=true", "extract.ground_method=tfidf"]
    )
    assert b.extract.ground_method == "tfidf" and identity_view(b) != identity_view(a)
    with pytest.raises(PlanError, match="ground_method"):
        stage_config("extract", ["extract/extractor=rules", "extract.ground_method=embedding"])


def test_needs_and_requires_follow_the_extractor() -> None:
    assert extract._needs({"extract": {"extractor": {"kind": "oneshot"}, "test_letters": True}}) == (
        "sample",
        "generate",
    )
    assert extract._needs({"extract": {"extractor": {"kind": "finetuned"}, "test_letters": False}}) == (
        "dataset",
        "train",
    )
    rules = stage_config("extract", ["extract/extractor=rules"])
    assert extract._requires(rules) == []
    vllm = stage_config("extract", ["extract/extractor=oneshot", "extract/model=smollm2_135m"])
    assert ("vllm", "gen (GPU) or gen-cpu (CPU)") in extract._requires(vllm) and (
        "gguf",
        "hf",
    ) in extract._requires(vllm)
    hf = stage_config("extract", ["extract/extractor=finetuned", "extract/backend=hf"])
    assert ("peft", "train") in extract._requires(hf)


def test_lora_rank_is_rounded_up_to_what_vllm_takes(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"r": 12}')
    assert extract.lora_rank(tmp_path) == 16
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    assert extract.lora_rank(tmp_path) == 8


#: preset -> (chat_template_kwargs, vLLM reasoning parser) the stage gives the engine
REASONING = {
    "qwen3_8b": ({"enable_thinking": False}, "qwen3"),
    "qwen3_32b": ({"enable_thinking": False}, "qwen3"),
    "qwen3_235b": ({"enable_thinking": False}, None),
    "gpt_oss_20b": (None, "openai_gptoss"),
    "gpt_oss_120b": (None, "openai_gptoss"),
}


def _engine(cfg: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[dict, dict]:
    """(backend config the stage builds, vllm.LLM arguments from it) on a GPU node, no engine started."""
    from clinsynth.core.context import StageContext
    from clinsynth.llm import backends

    seen: dict = {}
    monkeypatch.setattr(
        extract, "_make_backend", lambda b, m, *a: seen.update(backend=b, model=m) or object()
    )
    monkeypatch.setattr(backends, "_vllm_on_cpu", lambda: False)
    ctx = StageContext(stage="extract", stage_id="t", stage_dir=tmp_path, inputs={}, cache_dir=tmp_path)
    extract._runner(cfg, ctx, None)
    path = seen["model"].get("path") or "built-here"
    return seen["backend"], backends.vllm_engine_kwargs(path, seen["backend"], seen["model"])


@pytest.mark.parametrize("model", sorted(p.stem for p in (REPO / "conf/extract/model").glob("*.yaml")))
def test_every_one_shot_preset_validates_and_reasoning_models_think_before_the_grammar(
    model: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Guided decoding forces '{' as the first token: a Qwen3 preset asks for no thinking, and GPT-OSS
    (harmony analysis channel first) and a thinking Qwen3 get vLLM's reasoning parser, so the grammar
    holds the answer after the reasoning (enable_in_reasoning stays off)."""
    cfg = stage_config(
        "extract", ["extract/extractor=oneshot", "extract/backend=vllm", f"extract/model={model}"]
    )
    assert cfg.extract.llm_model is not None and cfg.extract.llm_model.name == model.replace("_packaged", "")
    kwargs, parser = REASONING.get(model, (None, None))
    backend_cfg, engine = _engine(cfg, monkeypatch, tmp_path)
    assert backend_cfg.get("chat_template_kwargs") == kwargs
    so = engine["structured_outputs_config"]
    assert so.get("reasoning_parser") == parser and not so.get("enable_in_reasoning")
    assert so["backend"] == "guidance" and so["disable_any_whitespace"] is True
    if model == "qwen3_8b":  # thinking asked for: it thinks, and the grammar waits for </think>
        on = stage_config(
            "extract", ["extract/extractor=oneshot", f"extract/model={model}", "extract.enable_thinking=true"]
        )
        backend_cfg, engine = _engine(on, monkeypatch, tmp_path)
        assert backend_cfg["chat_template_kwargs"] == {"enable_thinking": True}
        assert engine["structured_outputs_config"]["reasoning_parser"] == "qwen3"


def test_the_reasoning_parsers_named_are_vllms() -> None:
    """Names vLLM 0.32 registers (read from its registry module: importing vLLM takes ~15 s)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        from tests.llm_fixtures import skip_or_fail

        skip_or_fail("vllm is not installed (pip install -e '.[gen-cpu]')")  # fails where CI requires vLLM
    registry = (Path(next(iter(spec.submodule_search_locations))) / "reasoning" / "__init__.py").read_text()
    for _, parser in REASONING.values():
        if parser:
            assert f'"{parser}"' in registry, parser


def test_a_chunk_holds_several_engine_batches_by_default() -> None:
    """vLLM's batch drains at the end of each engine call: a chunk of exactly max_num_seqs letters ran
    part of every call on a thinning batch. Null derives 4x the backend's batch; it stays operational."""
    default = stage_config("extract", ["extract/extractor=finetuned", "extract/backend=vllm"])
    backend = default.extract.backend
    assert backend is not None and backend.kind == "vllm"
    assert default.extract.chunk is None and default.extract.chunk_size == 4 * backend.max_num_seqs == 1024
    wide = stage_config("extract", ["extract/extractor=finetuned", "extract.backend.max_num_seqs=64"])
    assert wide.extract.chunk_size == 256
    assert (
        stage_config("extract", ["extract/extractor=finetuned", "extract/backend=hf"]).extract.chunk_size
        == 32
    )
    assert stage_config("extract", ["extract/extractor=rules"]).extract.chunk_size == 1024
    set_ = stage_config("extract", ["extract/extractor=finetuned", "extract.chunk=7"])
    assert set_.extract.chunk_size == 7 and identity_view(set_) == identity_view(default)
