"""The extract stage on hand-made upstream folders.

- with a scripted backend (fast): which letters are read (test split only, dev letters, external
  .txt with and without BOM, an unreadable one becoming an invalid record that names its file), array
  shards, a relaunch that redoes only missing chunks, grounding's three outputs;
- with the session's one vLLM engine on the tiny random model: guided decoding makes every answer of a
  random model parse (unguided, the same prompts give noise), and the fine-tuned adapter of a few
  training steps is served through vLLM's LoRA support and changes the answers;
- with transformers + peft: the same adapter, no guided decoding, every answer parsed with repair.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from clinsynth.artifacts.letters import LetterShard
from clinsynth.artifacts.predictions import read_predictions
from clinsynth.artifacts.specs import write_sample_report, write_specs
from clinsynth.core.context import StageContext
from clinsynth.extraction.documents import Doc
from clinsynth.extraction.store import read_corrections, read_stats, read_ungrounded
from clinsynth.llm.backends import GenRequest, GenResult
from clinsynth.schema import ClinicalExtraction
from clinsynth.stages import extract
from launchers.plan import stage_config

pytest_plugins = ["tests.llm_fixtures"]

LETTERS = [
    ("spec-0", "test", "Diagnosen: Mammakarzinom links (C50.4). Pantoprazol 40 mg 1-0-0-0."),
    ("spec-1", "train", "Diagnosen: Kolonkarzinom. Entlassung in gutem Allgemeinzustand."),
    ("spec-2", "test", "Diagnosen: Prostatakarzinom (C61). Kein Anhalt für Knochenmetastasen."),
    ("spec-3", "test", "Diagnosen: Magenkarzinom. Z. n. Gastrektomie 2023."),
    ("spec-4", "val", "Diagnosen: Ovarialkarzinom. Carboplatin AUC 5."),
    ("spec-5", "test", "Diagnosen: Harnblasenkarzinom. Hb 10,2 g/dl."),
]
TEST_IDS = [s for s, split, _ in LETTERS if split == "test"]


def upstream(folder: Path, letters: Sequence[tuple[str, str, str]] = LETTERS) -> tuple[Path, Path]:
    """A sample and a generate stage folder in the artifacts' formats (one letter shard)."""
    sample, gen = folder / "sample", folder / "generate"
    with write_specs(sample) as w:
        for i, (sid, split, _) in enumerate(letters):
            w.write(
                {
                    "spec_id": sid,
                    "patient_id": f"p{i}",
                    "encounter_id": f"e{i}",
                    "split": split,
                    "letter_type": "Arztbrief",
                    "n_facts": 1,
                    "recipe": "{}",
                    "gold": "{}",
                }
            )
    write_sample_report(sample, {"specs": len(letters)})
    shard = LetterShard(gen, 0, 1, len(letters))
    shard.missing_chunks(1)
    shard.write_chunk(0, [{"spec_id": sid, "split": split, "text": text} for sid, split, text in letters])
    shard.finish(1, len(letters), {"shard": 0, "specs": len(letters)})
    return sample, gen


def make_ctx(
    stage_dir: Path, inputs: dict[str, Path], cache: Path, shard: int = 0, shards: int = 1
) -> StageContext:
    return StageContext(
        stage="extract",
        stage_id="test",
        stage_dir=stage_dir,
        inputs=inputs,
        cache_dir=cache,
        shard=shard,
        num_shards=shards,
    )


class Scripted:
    """A backend that answers every letter with a fixed extraction and records what it was asked."""

    name = "scripted"
    model = "scripted"
    sampling: ClassVar[dict[str, Any]] = {}

    def __init__(self, answer: str, fail_after: int | None = None) -> None:
        self.answer = answer
        self.fail_after = fail_after
        self.seen: list[GenRequest] = []
        self.closed = False

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise RuntimeError("the node went away")
        self.seen += requests
        return [GenResult(r.key, self.answer, 100, 20, "stop", 0.01) for r in requests]

    def close(self) -> None:
        self.closed = True


ANSWER = (
    '```json\n{"diagnoses":[{"text":"Mammakarzinom links","icd10gm":"C50.49"},{"text":"Pantoprazol"}]}\n```'
)


def oneshot_cfg(*overrides: str) -> Any:
    return stage_config(
        "extract",
        ["extract/extractor=oneshot", "extract/model=tiny", "extract/backend=vllm", *overrides],
    )


@pytest.fixture
def dev_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two stand-ins for development letters (written here, not corpus text): only those are read."""
    folder = tmp_path / "grascco"
    folder.mkdir()
    (folder / "Meyr.txt").write_text("\ufeffDiagnosen: Kolonkarzinom.", encoding="utf-8")
    (folder / "Rieser.txt").write_text("Diagnosen: Melanom.", encoding="utf-8")
    (folder / "Albers.txt").write_text("not a development letter: never read", encoding="utf-8")
    monkeypatch.setenv("CLINSYNTH_GRASCCO", str(folder))
    return folder


@pytest.fixture
def external(tmp_path: Path) -> Path:
    folder = tmp_path / "external"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes("\ufeffBrief A: Lungenkarzinom.".encode())
    (folder / "sub" / "b.txt").write_text("Brief B: Pankreaskarzinom.", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("Brief C: Magenkarzinom, Übelkeit.".encode("latin-1"))
    (folder / "notes.md").write_text("not a letter")
    return folder


def _run(cfg: Any, ctx: StageContext, backend: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(extract, "_make_backend", lambda *a, **k: backend)
    return extract.run(cfg, ctx)


def test_reads_test_dev_and_external_letters_over_shards(
    tmp_path: Path, dev_corpus: Path, external: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample, gen = upstream(tmp_path)
    cfg = oneshot_cfg(f"extract.letters={external}", "extract.chunk=2")
    stage_dir = tmp_path / "extract"
    seen: list[GenRequest] = []
    for shard in (0, 1):
        backend = Scripted(ANSWER)
        _run(
            cfg,
            make_ctx(stage_dir, {"sample": sample, "generate": gen}, tmp_path, shard, 2),
            backend,
            monkeypatch,
        )
        assert backend.closed
        seen += backend.seen
    preds = {p["doc"]: p for p in read_predictions(stage_dir)}
    external_docs = ["file:a.txt", "file:latin1.txt", "file:sub/b.txt"]
    assert sorted(preds) == sorted(TEST_IDS + ["grascco:Meyr", "grascco:Rieser"] + external_docs)
    assert {p["source"] for d, p in preds.items() if d.startswith("spec")} == {"synthetic"}
    assert preds["grascco:Meyr"]["source"] == "dev" and preds["file:a.txt"]["source"] == "external"
    bad = preds["file:latin1.txt"]
    assert (
        bad["status"] == "invalid" and "latin1.txt: not UTF-8" in bad["error"] and bad["extraction"] is None
    )
    # every readable letter went to the model once, with the one-shot prompt and without its BOM
    assert sorted(r.key for r in seen) == sorted(d for d in preds if d != "file:latin1.txt")
    letters = {r.key: r.messages[-1]["content"] for r in seen}
    assert (
        letters["file:a.txt"] == "Letter:\nBrief A: Lungenkarzinom."
        and "\ufeff" not in letters["grascco:Meyr"]
    )
    assert all(len(r.messages) == 4 and r.json_schema is not None and r.lora is None for r in seen)
    good = preds["spec-0"]
    assert good["status"] == "ok" and good["extractor"] == "oneshot" and good["raw"] == ANSWER
    assert good["extraction"]["diagnoses"][0]["icd10gm"] == "C50.49"  # ground=false: as extracted
    assert good["tokens"] == {"prompt": 100, "completion": 20}
    stats = read_stats(stage_dir)
    assert [s["shard"] for s in stats] == [0, 1] and sum(s["documents"] for s in stats) == len(preds)
    assert all(s["documents_total"] == len(preds) and s["guided"] for s in stats)
    assert not (stage_dir / "parts" / "shard-00000").exists()


def test_a_relaunch_redoes_only_the_missing_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample, gen = upstream(tmp_path)
    cfg = oneshot_cfg("extract.dev_letters=false", "extract.chunk=1")
    stage_dir = tmp_path / "extract"
    ctx = make_ctx(stage_dir, {"sample": sample, "generate": gen}, tmp_path)
    crashing = Scripted(ANSWER, fail_after=2)
    with pytest.raises(RuntimeError, match="went away"):
        _run(cfg, ctx, crashing, monkeypatch)
    assert crashing.closed  # the engine is shut down on the way out
    assert len(list((stage_dir / "parts" / "shard-00000").glob("chunk-*.jsonl"))) == 2
    again = Scripted(ANSWER)
    result = _run(cfg, ctx, again, monkeypatch)
    assert [r.key for r in again.seen] == TEST_IDS[2:]
    assert result["documents"] == 4 and result["documents_extracted"] == 2
    assert [p["doc"] for p in read_predictions(stage_dir)] == TEST_IDS
    assert read_stats(stage_dir)[0]["documents_resumed"] == 2


#: X50.49: no catalogue category (mapped from its text); J44.19: not in the catalogue, category J44 is (kept)
GROUND_ANSWER = (
    '{"diagnoses":[{"text":"Mammakarzinom links","icd10gm":"X50.49"},{"text":"COPD","icd10gm":"J44.19"},'
    '{"text":"Pantoprazol"}]}'
)


def test_grounding_keeps_the_codes_as_extracted_beside_the_grounded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample, gen = upstream(tmp_path)
    cfg = oneshot_cfg("extract.dev_letters=false", "extract.ground=true")
    stage_dir = tmp_path / "extract"
    _run(
        cfg,
        make_ctx(stage_dir, {"sample": sample, "generate": gen}, tmp_path),
        Scripted(GROUND_ANSWER),
        monkeypatch,
    )
    grounded = {p["doc"]: p for p in read_predictions(stage_dir)}
    raw = {p["doc"]: p for p in read_ungrounded(stage_dir)}
    corrections = {c["doc"]: c["corrections"] for c in read_corrections(stage_dir)}
    assert sorted(grounded) == sorted(raw) == sorted(corrections) == sorted(TEST_IDS)
    codes = [d.get("icd10gm") for d in grounded["spec-0"]["extraction"]["diagnoses"]]
    assert codes == ["C50", "J44.19", None]  # C50: the text's level; J44.19 kept
    assert raw["spec-0"]["extraction"]["diagnoses"][0]["icd10gm"] == "X50.49"
    fixes = {c["path"]: c for c in corrections["spec-0"]}
    assert (fixes["diagnoses[0].icd10gm"]["before"], fixes["diagnoses[0].icd10gm"]["after"]) == (
        "X50.49",
        "C50",
    )
    assert fixes["diagnoses[1].icd10gm"]["after"] is None and fixes["diagnoses[1].icd10gm"][
        "reason"
    ].startswith("kept")
    # "Pantoprazol" is no diagnosis: left without a code, said
    assert fixes["diagnoses[2].icd10gm"]["after"] is None
    # only the changed code counts
    assert read_stats(stage_dir)[0]["grounding_corrections"] == len(TEST_IDS)


def test_the_rules_baseline_needs_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("clinsynth.extraction.rules")
    sample, gen = upstream(tmp_path)
    monkeypatch.setattr(extract, "_make_backend", lambda *a, **k: pytest.fail("rules started an engine"))
    stage_dir = tmp_path / "extract"
    cfg = stage_config(
        "extract", ["extract/extractor=rules", "extract.dev_letters=false", "extract.ground=true"]
    )
    extract.run(cfg, make_ctx(stage_dir, {"sample": sample, "generate": gen}, tmp_path))
    preds = {p["doc"]: p for p in read_predictions(stage_dir)}
    assert sorted(preds) == sorted(TEST_IDS) and {p["extractor"] for p in preds.values()} == {"rules"}
    assert all(p["status"] in ("ok", "repaired") and p["tokens"] is None for p in preds.values())
    assert json.loads(preds["spec-0"]["raw"]) == next(iter(read_ungrounded(stage_dir)))["extraction"]
    codes = {d["icd10gm"] for d in preds["spec-0"]["extraction"]["diagnoses"]}
    assert "C50.4" in codes  # the code written in the letter
    stats = read_stats(stage_dir)[0]
    assert stats["backend"] is None and stats["model"] is None and stats["completion_tokens"] == 0
    progress = json.loads((stage_dir / "progress" / "00000.json").read_text())  # what launch status shows
    n = len(TEST_IDS)
    assert (progress["done"], progress["total"], progress["unit"]) == (n, n, "letters")


def test_the_stage_id_follows_the_external_letters(tmp_path: Path, dev_corpus: Path) -> None:
    folder = tmp_path / "letters"
    folder.mkdir()
    (folder / "x.txt").write_text("Brief.")
    cfg = oneshot_cfg(f"extract.letters={folder}")
    before = extract._inputs(cfg)
    assert before["letters"]["files"] == 1 and before["dev"]["files"] == 2  # Meyr, Rieser; not Albers
    (folder / "y.txt").write_text("Noch ein Brief.")
    assert extract._inputs(cfg) != before


# ---------------------------------------------------------------- real engines, tiny model

DIAGNOSES = [
    ("Mammakarzinom links", "C50.4"),
    ("Kolonkarzinom", "C18.9"),
    ("Prostatakarzinom", "C61"),
    ("Magenkarzinom", "C16.9"),
    ("Pankreaskarzinom", "C25.9"),
    ("Ovarialkarzinom", "C56"),
]
TRAIN_OVERRIDES = [
    "train/model=tiny",
    "train/deepspeed=none",
    "train.method=lora",
    "train.lora.r=8",
    "train.lora.alpha=16",
    "train.lr=2.0e-2",
    "train.warmup_ratio=0.0",
    "train.lr_scheduler=constant",
    "train.effective_batch=2",
    "train.per_device_batch=1",
    "train.max_seq_len=1024",
    "train.packing=false",
    "train.logging_steps=1",
    "train.save_steps=100",
    "train.max_steps=12",
    "train.gradient_checkpointing=false",
]


def _sft_letter(i: int) -> tuple[str, str]:
    from clinsynth.training.answer import canonical_answer

    text, code = DIAGNOSES[i % len(DIAGNOSES)]
    letter = (
        f"Sehr geehrte Kollegen, Patient Nr. {100 + i}. Diagnosen: {text} ({code}). Entlassung nach Hause."
    )
    gold = {"diagnoses": [{"text": text, "icd10gm": code, "role": "main"}]}
    return letter, canonical_answer(gold)


@pytest.fixture(scope="module")
def finetuned(
    tmp_path_factory: pytest.TempPathFactory, llm_cache_dir: Path, tiny_model_dir: Path
) -> dict[str, Path]:
    """A dataset folder (schema_in_prompt none) and a train folder with a LoRA adapter of 12 steps on the
    tiny model, made by the real train stage."""
    pytest.importorskip("peft", reason="the fine-tuned adapter needs peft (pip install -e '.[train]')")
    from clinsynth.core.atomic import write_json
    from clinsynth.llm.weights import load_tokenizer
    from clinsynth.stages.train import run as train
    from clinsynth.training.chat import PROMPT_VERSION, example_messages, tokenize_example

    cfg = stage_config("train", TRAIN_OVERRIDES)
    tok = load_tokenizer(cfg.train.model.model_dump(), llm_cache_dir)
    dataset = tmp_path_factory.mktemp("dataset")
    (dataset / "sft").mkdir()
    with open(dataset / "sft" / "train.jsonl", "w") as fh:
        for i in range(12):
            messages = example_messages(*_sft_letter(i), schema_in_prompt="none")
            ex = tokenize_example(tok, messages)
            row = {
                "id": f"spec-{i}",
                "patient_id": f"p{i}",
                "split": "train",
                "messages": messages,
                "n_tokens": ex.n_tokens,
                "n_prompt": ex.n_prompt,
                "n_answer": ex.n_answer,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_json(dataset / "stats.json", {"schema_in_prompt": "none", "prompt_version": PROMPT_VERSION})
    train_dir = tmp_path_factory.mktemp("train")
    train(
        cfg,
        StageContext(
            stage="train",
            stage_id="t",
            stage_dir=train_dir,
            inputs={"dataset": dataset},
            cache_dir=llm_cache_dir,
            checkpoint_dir=train_dir / "checkpoints" / "job",
        ),
    )
    assert (train_dir / "adapter" / "adapter_config.json").is_file()
    return {"dataset": dataset, "train": train_dir}


def finetuned_cfg(*overrides: str) -> Any:
    return stage_config(
        "extract",
        [
            "extract/extractor=finetuned",
            "train/model=tiny",
            "extract.dev_letters=false",
            "extract.chunk=3",
            "extract.max_tokens=600",
            "extract.guided.max_items=3",
            "extract.guided.max_string=24",
            *overrides,
        ],
    )


class Shared:
    """The session's engine for one stage run: the stage's sampling, LoRA as the stage asks, never closed."""

    def __init__(self, backend: Any, backend_cfg: dict[str, Any], sampling: dict[str, Any]) -> None:
        self.backend = backend
        self.name = backend.name
        self.backend_cfg = backend_cfg
        self.sampling = sampling

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return list(self.backend.generate(requests))

    def close(self) -> None:
        pass


def _shared(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[Shared]:
    made: list[Shared] = []

    def make(
        backend_cfg: dict[str, Any], model_cfg: dict[str, Any], sampling: dict[str, Any], ctx: Any
    ) -> Shared:
        assert model_cfg["kind"] == "tiny"
        monkeypatch.setitem(engine.sampling, "temperature", float(sampling["temperature"]))
        made.append(Shared(engine, backend_cfg, sampling))
        return made[-1]

    monkeypatch.setattr(extract, "_make_backend", make)
    return made


def _letters(tmp_path: Path) -> tuple[Path, Path]:
    rows = [(f"spec-{i}", "test", _sft_letter(i + 40)[0]) for i in range(6)]
    return upstream(tmp_path, rows)


def test_guided_decoding_makes_every_answer_of_a_random_model_parse(
    vllm_engine_backend: Any, finetuned: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinsynth.extraction.parse import load_object

    made = _shared(vllm_engine_backend, monkeypatch)
    sample, gen = _letters(tmp_path)
    inputs = {"sample": sample, "generate": gen, **finetuned}
    stage_dir = tmp_path / "guided"
    extract.run(finetuned_cfg("extract.extractor.weights=adapter"), make_ctx(stage_dir, inputs, tmp_path))
    assert made[0].backend_cfg["enable_lora"] and made[0].backend_cfg["max_lora_rank"] == 8
    preds = list(read_predictions(stage_dir))
    assert len(preds) == 6
    for p in preds:
        # the grammar, not a repair, made it valid: the raw answer itself is schema-valid JSON
        assert p["status"] == "ok", p
        ClinicalExtraction.model_validate_json(p["raw"])
        assert p["tokens"]["completion"] < 600
    # the same prompts unguided: the random model writes noise that holds no extraction
    unguided = tmp_path / "unguided"
    extract.run(
        finetuned_cfg("extract.guided.enabled=false", "extract.max_tokens=48"),
        make_ctx(unguided, inputs, tmp_path),
    )
    assert all(load_object(p["raw"])[0] is None for p in read_predictions(unguided))
    assert {p["status"] for p in read_predictions(unguided)} == {"invalid"}


def test_the_adapter_is_served_through_vllm_lora_and_changes_the_answers(
    vllm_engine_backend: Any, finetuned: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinsynth.extraction.guided import decoding_schema
    from clinsynth.extraction.llm import LLMRunner
    from clinsynth.extraction.prompts import finetuned_messages
    from clinsynth.llm.backends import Adapter

    monkeypatch.setitem(vllm_engine_backend.sampling, "temperature", 0.0)
    if not vllm_engine_backend.engine_args.get("enable_lora"):
        pytest.fail("the shared vLLM engine (tests/llm_fixtures.py) must start with enable_lora=true")
    docs = [Doc(f"d{i}", "external", _sft_letter(i + 50)[0]) for i in range(4)]

    def answers(adapter: Adapter | None) -> list[str]:
        runner = LLMRunner(
            vllm_engine_backend,
            "finetuned",
            lambda t: finetuned_messages(t, schema_in_prompt="none"),
            max_tokens=600,
            seed=0,
            json_schema=decoding_schema(3, 24),
            adapter=adapter,
        )
        out = runner.run(docs)
        assert all(o["prediction"]["status"] == "ok" for o in out), [o["prediction"] for o in out]
        return [o["prediction"]["raw"] for o in out]

    adapter = Adapter("finetuned", str(finetuned["train"] / "adapter"))
    base, tuned = answers(None), answers(adapter)
    assert tuned != base
    assert answers(adapter) == tuned  # greedy: the adapter's answers are its own, batch after batch


def test_transformers_with_peft_parses_every_answer_with_repair(
    finetuned: dict[str, Path], tmp_path: Path, llm_cache_dir: Path
) -> None:
    sample, gen = _letters(tmp_path)
    cfg = finetuned_cfg("extract/backend=hf", "extract.max_tokens=40")
    stage_dir = tmp_path / "hf"
    extract.run(cfg, make_ctx(stage_dir, {"sample": sample, "generate": gen, **finetuned}, llm_cache_dir))
    preds = list(read_predictions(stage_dir))
    assert len(preds) == 6 and all(
        p["extractor"] == "finetuned" and p["tokens"]["completion"] > 0 for p in preds
    )
    for p in preds:  # unguided noise: every answer gets a status and, unless invalid, a valid extraction
        assert (p["extraction"] is None) == (p["status"] == "invalid")
        if p["extraction"] is not None:
            ClinicalExtraction.model_validate(p["extraction"])
        else:
            assert p["error"]
    stats = read_stats(stage_dir)[0]
    assert stats["backend"] == "hf" and stats["guided"] is False and stats["completion_tokens"] > 0
    assert orjson.loads((stage_dir / "stats" / "shard-00000.json").read_bytes())["statuses"]
