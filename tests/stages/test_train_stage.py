"""The train stage on CPU: LoRA on a fixed small set with the tiny random model (seconds per run).

- the loss falls clearly over 30 steps; the adapter saves, loads in transformers + peft and in vLLM
  (CPU, `enable_lora`) and changes the output of both against the base model;
- a stop request in the middle (the flag the launcher's USR2 handler sets) checkpoints, raises
  StopRequested (the job would requeue), and the resumed attempt ends with the same losses step by step as
  an uninterrupted run and the same examples at every step (so each example is seen equally often).
  Tolerance: 1e-5 relative on every logged loss (fp32 on CPU, same kernels, same order: in practice the
  values are bit-identical; the tolerance only allows for reduction-order noise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the train stage needs torch (pip install -e '.[train]')")
pytest.importorskip("peft", reason="the train stage needs peft (pip install -e '.[train]')")

from clinsynth.core.context import StageContext, StopRequested
from launchers.plan import stage_config

pytest_plugins = ["tests.llm_fixtures"]

DIAGNOSES = [
    ("Mammakarzinom links", "C50.4"),
    ("Kolonkarzinom", "C18.7"),
    ("Bronchialkarzinom rechts", "C34.1"),
    ("Prostatakarzinom", "C61"),
    ("Pankreaskarzinom", "C25.0"),
    ("Magenkarzinom", "C16.2"),
    ("Ovarialkarzinom", "C56"),
    ("Harnblasenkarzinom", "C67.9"),
]
SIDE = [
    "Arterielle Hypertonie (I10.90)",
    "Diabetes mellitus Typ 2 (E11.9)",
    "Vorhofflimmern (I48.9)",
    "keine",
]

#: the train settings of these tests: tiny model, 1 example per micro-batch, 2 micro-batches per step
BASE_OVERRIDES = [
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
    "train.packing=true",
    "train.gradient_checkpointing=true",
    "train.logging_steps=1",
    "train.save_steps=100",
]


def letters(n: int) -> list[tuple[str, str]]:
    """n (letter, answer) pairs: short German discharge letters and their compact JSON extraction."""
    out = []
    for i in range(n):
        dx, code = DIAGNOSES[i % len(DIAGNOSES)]
        side = SIDE[(i // len(DIAGNOSES)) % len(SIDE)]
        day = 1 + (i * 7) % 27
        letter = (
            f"Sehr geehrte Kollegen, wir berichten über Patient Nr. {100 + i}, stationär vom {day:02d}.03. "
            f"bis {day + 1:02d}.03.2024.\nDiagnosen: {dx} ({code}). Nebendiagnosen: {side}.\n"
            "Therapie: Chemotherapie, gut vertragen. Entlassung in gutem Allgemeinzustand."
        )
        answer = json.dumps(
            {"diagnosen": [{"name": dx, "icd10": code}], "nebendiagnosen": side},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        out.append((letter, answer))
    return out


def write_dataset(folder: Path, tokenizer: Any, n: int = 16) -> Path:
    """A dataset stage folder with sft/train.jsonl in the dataset stage's row format."""
    from clinsynth.training.chat import example_messages, tokenize_example

    (folder / "sft").mkdir(parents=True, exist_ok=True)
    with open(folder / "sft" / "train.jsonl", "w") as fh:
        for i, (letter, answer) in enumerate(letters(n)):
            messages = example_messages(letter, answer, schema_in_prompt="none")
            ex = tokenize_example(tokenizer, messages)
            row = {
                "id": f"spec-{i:03d}",
                "patient_id": f"p{i}",
                "split": "train",
                "messages": messages,
                "n_tokens": len(ex.input_ids),
                "n_prompt": ex.n_prompt,
                "n_answer": ex.n_answer,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return folder


class StopAtStep:
    """A tracker that raises the stop flag when step `at` is logged, as USR2 would in the middle of a run
    (the stage sees it at the next step end)."""

    log_samples = False

    def __init__(self, at: int) -> None:
        self.at = at
        self.ctx: StageContext | None = None

    def log(self, metrics: Any, step: int | None = None) -> None:
        if step == self.at and self.ctx is not None:
            self.ctx.stop_signal.request()

    def summary(self, values: Any) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def make_ctx(
    stage_dir: Path, dataset: Path, cache: Path, attempt: int = 1, tracker: Any = None
) -> StageContext:
    kw: dict[str, Any] = {"tracker": tracker} if tracker is not None else {}
    ctx = StageContext(
        stage="train",
        stage_id="test",
        stage_dir=stage_dir,
        inputs={"dataset": dataset},
        cache_dir=cache,
        checkpoint_dir=stage_dir / "checkpoints" / "job",
        attempt=attempt,
        **kw,
    )
    if tracker is not None:
        tracker.ctx = ctx
    return ctx


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, llm_cache_dir: Path, tiny_model_dir: Path
) -> dict[str, Any]:
    from clinsynth.llm.weights import load_tokenizer

    cfg = stage_config("train", [*BASE_OVERRIDES, "train.max_steps=30"])
    tok = load_tokenizer(cfg.train.model.model_dump(), llm_cache_dir)
    dataset = write_dataset(tmp_path_factory.mktemp("dataset"), tok)
    return {"cache": llm_cache_dir, "dataset": dataset, "model_dir": tiny_model_dir, "tokenizer": tok}


#: the `trained` run: 2 examples (~820 tokens each) per micro-batch in rows of 2,048: packing puts both
#: into one row
TRAINED = [
    *BASE_OVERRIDES,
    "train.max_steps=30",
    "train.merge=true",
    "train.per_device_batch=2",
    "train.max_seq_len=2048",
]


@pytest.fixture(scope="module")
def trained(setup: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 steps; the stop flag rises while the last step is logged, i.e. after training and before the
    merge: that attempt ends with a "merge" checkpoint, the requeued one only merges."""
    from clinsynth.stages.train import run

    cfg = stage_config("train", TRAINED)
    stage_dir = tmp_path_factory.mktemp("train")
    with pytest.raises(StopRequested, match="merges the adapter"):
        run(cfg, make_ctx(stage_dir, setup["dataset"], setup["cache"], tracker=StopAtStep(30)))
    state = json.loads((stage_dir / "checkpoints" / "job" / "checkpoint.json").read_text())["state"]
    assert state == {"phase": "merge", "step": 30}
    assert (stage_dir / "adapter").is_dir() and not (stage_dir / "merged").exists()
    report = (stage_dir / "train_report.json").read_bytes()
    run(cfg, make_ctx(stage_dir, setup["dataset"], setup["cache"], attempt=2))
    assert (stage_dir / "merged" / "config.json").is_file()
    assert (stage_dir / "train_report.json").read_bytes() == report  # not trained again
    return stage_dir


def test_training_reports_its_steps_as_progress(trained: Path) -> None:
    from clinsynth.core.progress import read_progress

    prog = read_progress(trained, 0)  # launch status shows it while the job runs
    assert prog is not None and (prog["done"], prog["total"], prog["unit"]) == (30, 30, "steps")


def test_lora_loss_falls_and_the_report_says_how_it_ran(trained: Path) -> None:
    from clinsynth.training.trainer import read_metrics

    metrics = read_metrics(trained)
    losses = [m["train/loss"] for m in metrics]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # a random 0.2M-parameter model with rank-8 adapters: ~6.5 -> ~5.5 nats on the answer tokens
    assert last < first - 0.75, f"loss did not fall clearly: {first:.3f} -> {last:.3f}"
    assert sum(losses[-10:]) < sum(losses[10:20]) < sum(losses[:10])
    for m in metrics:
        assert (
            m["train/tokens_per_s"] > 0
            and m["train/peak_mem_gb"] > 0
            and m["train/lr"] == pytest.approx(2e-2)
        )
        assert m["train/grad_norm"] >= 0 and 0 < m["train/mfu"] < 1
    report = json.loads((trained / "train_report.json").read_text())
    assert report["steps"] == 30 and report["examples_seen"] == 30 * 2
    assert report["packing"] == "position_ids" and report["examples_per_row"] == 2.0  # both in one row
    assert report["world_size"] == 1 and report["deepspeed"] == "none"
    assert report["gradient_accumulation"] == 1 and report["precision"] == "fp32"
    assert report["final_loss"] == pytest.approx(losses[-1])
    assert report["resumed_from"] is None and report["params_trainable"] < report["params_total"]


def _prompt_ids(tokenizer: Any) -> list[int]:
    from clinsynth.training.chat import prompt_messages

    letter = letters(3)[2][0]
    msgs = prompt_messages(letter, schema_in_prompt="none")
    return list(
        tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def test_adapter_loads_in_transformers_peft_and_changes_the_output(
    trained: Path, setup: dict[str, Any]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = trained / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    ids = torch.tensor([_prompt_ids(setup["tokenizer"])])
    base = AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        base_out = base.generate(ids, max_new_tokens=12, do_sample=False)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        tuned_logits = tuned(ids).logits
        tuned_out = tuned.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert (tuned_logits - base_logits).abs().max() > 1e-2
    assert tuned_out.tolist() != base_out.tolist()
    # train.merge=true: merged/ is base + adapter in one plain model folder, the same function
    merged = AutoModelForCausalLM.from_pretrained(trained / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, tuned_logits, atol=1e-4)


def test_full_fine_tuning_writes_the_whole_model(setup: dict[str, Any], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from clinsynth.stages.train import run

    cfg = stage_config(
        "train", [*BASE_OVERRIDES, "train.method=full", "train.max_steps=2", "train.lr=1.0e-3"]
    )
    run(cfg, make_ctx(tmp_path, setup["dataset"], setup["cache"]))
    report = json.loads((tmp_path / "train_report.json").read_text())
    assert report["method"] == "full" and report["params_trainable"] == report["params_total"]
    assert not (tmp_path / "adapter").exists()
    ids = torch.tensor([_prompt_ids(setup["tokenizer"])])
    base = AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype=torch.float32).eval()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (tuned(ids).logits - base(ids).logits).abs().max() > 1e-3


def test_adapter_loads_in_vllm_and_changes_its_output(trained: Path, setup: dict[str, Any]) -> None:
    from tests.llm_fixtures import VLLM_ENV, import_vllm_or_skip, skip_or_fail

    vllm = import_vllm_or_skip()
    from vllm.lora.request import LoRARequest

    mp = pytest.MonkeyPatch()
    for key, value in VLLM_ENV.items():
        mp.setenv(key, value)
    try:
        llm = vllm.LLM(
            model=str(setup["model_dir"]),
            dtype="float32",
            enable_lora=True,
            max_lora_rank=8,
            max_loras=1,
            max_model_len=1024,
            enforce_eager=True,
            seed=0,
            max_num_seqs=4,
        )
    except Exception as exc:
        skip_or_fail(f"the vLLM engine did not start: {type(exc).__name__}: {exc}")
    finally:
        mp.undo()
    try:
        prompt = {"prompt_token_ids": _prompt_ids(setup["tokenizer"])}
        params = vllm.SamplingParams(temperature=0.0, max_tokens=12)
        base = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        lora = LoRARequest("train", 1, str(trained / "adapter"))
        tuned = llm.generate([prompt], params, lora_request=lora, use_tqdm=False)[0].outputs[0].token_ids
    finally:
        del llm
    assert list(tuned) != list(base)


def test_stop_mid_run_checkpoints_requeues_and_resumes_exactly(setup: dict[str, Any], tmp_path: Path) -> None:
    """6 steps (8 examples, 2 per step in 2 micro-batches: 1.5 epochs) uninterrupted vs. stopped after step
    5, the first of the second epoch (flag raised while step 4 is logged), and resumed: the reshuffled
    second epoch resumes at its second step. Resuming with another batch geometry is refused."""
    from clinsynth.stages.train import run
    from clinsynth.training.trainer import TrainSetupError, read_metrics, seen_by_step, seen_counts

    cfg = stage_config(
        "train", [*BASE_OVERRIDES, "train.max_steps=6", "train.save_steps=2", "train.lora.dropout=0.1"]
    )  # dropout: the RNG state must resume too
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    data = write_dataset(tmp_path / "dataset", setup["tokenizer"], n=8)
    run(cfg, make_ctx(ref_dir, data, setup["cache"]))
    ref_report = json.loads((ref_dir / "train_report.json").read_text())
    assert ref_report["packing"] == "none (one example per row)"  # per_device_batch=1: nothing to pack

    with pytest.raises(StopRequested):
        run(cfg, make_ctx(run_dir, data, setup["cache"], tracker=StopAtStep(4)))
    state = json.loads((run_dir / "checkpoints" / "job" / "checkpoint.json").read_text())["state"]
    assert state["step"] == 5 and Path(state["hf_checkpoint"]).name == "checkpoint-5"
    assert (Path(state["hf_checkpoint"]) / "optimizer.pt").is_file()
    assert not (run_dir / "adapter").exists()
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 6))

    other = stage_config("train", [*BASE_OVERRIDES, "train.max_steps=6", "train.per_device_batch=2"])
    with pytest.raises(TrainSetupError, match=r"checkpoint-5 was written with .*per_device_batch.: 1"):
        run(other, make_ctx(run_dir, data, setup["cache"], attempt=2))

    resumed = make_ctx(run_dir, data, setup["cache"], attempt=2)
    assert resumed.resuming
    run(cfg, resumed)
    report = json.loads((run_dir / "train_report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-5") and report["steps"] == 6
    assert report["epochs"] == pytest.approx(1.5)

    ref, got = read_metrics(ref_dir), read_metrics(run_dir)
    assert [m["step"] for m in got] == list(range(1, 7))
    for a, b in zip(ref, got, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5), a["step"]
        assert b["train/lr"] == pytest.approx(a["train/lr"], rel=1e-6)
    by_step = seen_by_step(ref_dir)
    assert seen_by_step(run_dir) == by_step
    assert sorted(i for s in range(1, 5) for i in by_step[s]) == list(range(8))  # epoch 1: each once
    assert seen_counts(run_dir) == seen_counts(ref_dir) and sum(seen_counts(ref_dir).values()) == 6 * 2
    assert report["final_loss"] == pytest.approx(
        json.loads((ref_dir / "train_report.json").read_text())["final_loss"], rel=1e-5
    )


def test_batch_geometry_and_qlora_on_cpu_are_refused_with_a_reason() -> None:
    from clinsynth.training.trainer import TrainSetupError, gradient_accumulation, plan_geometry

    assert gradient_accumulation(64, 1, 16) == 4
    with pytest.raises(TrainSetupError, match="not a multiple"):
        gradient_accumulation(6, 2, 2)
    qlora = stage_config("train", [*BASE_OVERRIDES, "train.method=qlora"]).train
    with pytest.raises(TrainSetupError, match="needs a GPU"):
        plan_geometry(qlora, 1, cuda=False)
    geom = plan_geometry(stage_config("train", BASE_OVERRIDES).train, 2, cuda=False)
    assert (geom.backend, geom.bf16, geom.grad_accum) == ("gloo", False, 1)
    with pytest.raises(Exception, match="must not name lm_head"):
        stage_config("train", [*BASE_OVERRIDES, "train.lora.target_modules=[q_proj,lm_head]"])
