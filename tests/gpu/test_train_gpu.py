"""GPU-only: tests/gpu/train_gpu_check.py on one H200 (Gemma-3-27B shape, random weights, bf16 LoRA).

Runs the prepared script in a subprocess and checks its report: packing was exact (position ids),
each variant trained on the same useful tokens, and the best packed variant reached the throughput
goal over the plain padded loop (CLINSYNTH_TRAIN_GPU_MIN_RATIO, default 2.0, the issue's goal). Liger
is used when liger_kernel imports or a wheel is found (CLINSYNTH_LIGER_WHEEL, or .wheels/liger_kernel-*.whl
carried with the tree). The same script's code path runs on CPU with --tiny in tests/unit/test_collate.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu.test_vllm_gpu import nvidia_present

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not nvidia_present(), reason="no NVIDIA GPU")]


def liger_wheel() -> Path | None:
    env = os.environ.get("CLINSYNTH_LIGER_WHEEL")
    if env:
        return Path(env)
    found = sorted((ROOT / ".wheels").glob("liger_kernel-*.whl"))
    return found[-1] if found else None


def test_packed_lora_step_throughput_on_gemma3_27b_shape(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("an NVIDIA driver but no CUDA device torch can use")
    out = tmp_path / "train_gpu.json"
    cmd = [sys.executable, str(ROOT / "tests/gpu/train_gpu_check.py"), "--steps", "5", "--json", str(out)]
    wheel = liger_wheel()
    if wheel is not None:
        cmd += ["--liger-wheel", str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    print(proc.stdout[-5000:])
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["packing_mode"] == "position_ids"
    assert report["packed"]["useful_tokens"] == report["padded"]["useful_tokens"]
    assert report["packed"]["padding_fraction"] == 0.0
    minimum = float(os.environ.get("CLINSYNTH_TRAIN_GPU_MIN_RATIO", "2.0"))
    assert report["ratio"] >= minimum, (
        f"best packed variant {report['best']} is {report['ratio']}x the padded loop, goal {minimum}x"
    )
