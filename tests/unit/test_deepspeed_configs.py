"""conf/train/deepspeed/{zero2,zero3}.yaml pass DeepSpeed's own config parser once the Trainer's "auto"
values are filled, and the ZeRO-3 + LoRA save path writes complete adapter tensors.

The ZeRO-3 test runs the train stage on 2 CPU ranks (gloo) in two processes with the launcher's
environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK). DeepSpeed's first CPU run JIT-builds
`deepspeed_shm_comm_op` (1-3 min, g++ + ninja) into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions);
later runs reuse it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DS_DIR = REPO / "conf" / "train" / "deepspeed"


def _filled(name: str, *, per_device: int = 2, accum: int = 4, hidden: int = 64) -> dict[str, Any]:
    """The config as the Trainer hands it to DeepSpeed: every "auto" replaced from TrainingArguments."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    raw = yaml.safe_load((DS_DIR / f"{name}.yaml").read_text())
    args = TrainingArguments(
        output_dir="unused",
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        use_cpu=True,
        report_to="none",
    )
    hf = HfTrainerDeepSpeedConfig(json.loads(json.dumps(raw["config"])))
    hf.trainer_config_process(args)
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=hidden))
    hf.trainer_config_finalize(args, model, num_training_steps=100)
    return dict(hf.config)


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs_pass_deepspeeds_parser(name: str, stage: int) -> None:
    pytest.importorskip("deepspeed", reason="pip install -e '.[train]'")
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = yaml.safe_load((DS_DIR / f"{name}.yaml").read_text())
    assert raw["name"] == name
    assert (DS_DIR / f"{name}.yaml").read_text().startswith("# python -m launch")
    filled = _filled(name)
    assert "auto" not in json.dumps(filled)
    ds = DeepSpeedConfig(filled)
    assert ds.zero_optimization_stage == stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (
        2,
        4,
        8,
    )
    assert ds.zero_allow_untested_optimizer and not ds.bfloat16_config.enabled
    if stage == 3:
        assert ds.zero_config.gather_16bit_weights_on_model_save  # the adapter is gathered when saved


def test_deepspeeds_parser_rejects_a_misspelt_key() -> None:
    """The validation above can fail: a misspelt ZeRO key is refused by DeepSpeed's parser."""
    pytest.importorskip("deepspeed", reason="pip install -e '.[train]'")
    from deepspeed.runtime.config import DeepSpeedConfig

    bad = _filled("zero3")
    bad["zero_optimization"]["stage3_gather_16bit_weights_on_model_sav"] = True
    with pytest.raises(Exception, match="stage3_gather_16bit_weights_on_model_sav"):
        DeepSpeedConfig(bad)


def test_none_has_no_config() -> None:
    assert yaml.safe_load((DS_DIR / "none.yaml").read_text()) == {"name": "none", "config": None}


# ---- ZeRO-3 + LoRA on 2 CPU ranks

OVERRIDES = [
    "train/deepspeed=zero3",
    "train.max_steps=3",
    "train.effective_batch=2",
    "train.per_device_batch=1",
    "train.save_steps=100",
    "train.gradient_checkpointing=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(stage_dir: str, dataset: str, cache: str, overrides: list[str]) -> None:
    """One rank of the train stage, as a launcher task runs it (rank from the environment)."""
    from clinsynth.core.context import StageContext
    from clinsynth.stages.train import run
    from launchers.plan import stage_config

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ctx = StageContext(
        stage="train",
        stage_id="zero3",
        stage_dir=Path(stage_dir),
        inputs={"dataset": Path(dataset)},
        cache_dir=Path(cache),
        checkpoint_dir=Path(stage_dir) / "checkpoints" / "job",
        rank=rank,
        local_rank=int(os.environ["LOCAL_RANK"]),
        world_size=world,
    )
    run(stage_config("train", overrides), ctx)


def test_zero3_lora_on_two_cpu_ranks_saves_complete_adapter_tensors(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="pip install -e '.[train]'")
    pytest.importorskip("peft", reason="pip install -e '.[train]'")
    from safetensors.torch import load_file

    from clinsynth.llm.weights import load_tokenizer
    from clinsynth.training.trainer import seen_by_step
    from launchers.plan import stage_config
    from tests.stages.test_train_stage import BASE_OVERRIDES, write_dataset

    overrides = [*BASE_OVERRIDES, *OVERRIDES]
    cfg = stage_config("train", overrides)
    cache = tmp_path / "cache"
    dataset = write_dataset(tmp_path / "dataset", load_tokenizer(cfg.train.model.model_dump(), cache), n=8)
    stage_dir = tmp_path / "train"
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        code = (
            "import sys, json; from tests.unit.test_deepspeed_configs import worker; "
            "worker(*sys.argv[1:4], json.loads(sys.argv[4]))"
        )
        args = [sys.executable, "-c", code, str(stage_dir), str(dataset), str(cache), json.dumps(overrides)]
        with open(tmp_path / f"rank{rank}.log", "w") as log:  # the child keeps its own copy of the fd
            procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    logs = "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in (0, 1))
    assert codes == [0, 0], logs

    report = json.loads((stage_dir / "train_report.json").read_text())
    assert (report["deepspeed"], report["world_size"], report["steps"]) == ("zero3", 2, 3)
    assert report["examples_seen"] == 3 * 2
    tensors = load_file(str(stage_dir / "adapter" / "adapter_model.safetensors"))
    r, hidden = cfg.train.lora.r, 64
    lora_a = {k: v for k, v in tensors.items() if "lora_A" in k}
    assert lora_a and all(v.numel() > 0 for v in tensors.values())
    q = next(v for k, v in lora_a.items() if "q_proj" in k)
    assert tuple(q.shape) == (r, hidden)  # gathered: the full matrix, not this rank's shard (or 0 elements)
    # both ranks trained different examples at each step (a real 2-rank job, not two copies of rank 0)
    steps = seen_by_step(stage_dir)
    assert len(steps) == 3 and all(len(ids) == 2 for ids in steps.values())
