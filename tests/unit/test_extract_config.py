"""The extract stage's config: each extractor gets what it needs and nothing it ignores enters its id;
every shipped preset validates; the stage needs what the extractor reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinsynth.core.config import identity_view
from clinsynth.stages import extract
from launchers.plan import PlanError, stage_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model", sorted(p.stem for p in (REPO / "conf/extract/model").glob("*.yaml")))
def test_every_one_shot_preset_validates(model: str) -> None:
    cfg = stage_config("extract", ["extract/extractor=oneshot", f"extract/model={model}"])
    assert cfg.extract.llm_model is not None and cfg.extract.llm_model.name == model.replace("_packaged", "")


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
