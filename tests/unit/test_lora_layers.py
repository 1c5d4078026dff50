"""train.lora.last_layers: adapters in the last N decoder layers only, and backpropagation stops there."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from clinsynth.training.trainer import _last_layers, _target_modules  # noqa: E402


def _llama(layers: int = 4) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def _adapted(n: int | None) -> torch.nn.Module:
    model = _llama()
    cfg = peft.LoraConfig(
        r=4, lora_alpha=4, target_modules=_target_modules(model, "all-linear", n), task_type="CAUSAL_LM",
        layers_to_transform=_last_layers(model, n),
    )
    return peft.get_peft_model(model, cfg)


def _layers_with_adapters(model: torch.nn.Module) -> set[int]:
    return {int(name.split(".layers.")[1].split(".")[0]) for name, _ in model.named_parameters()
            if "lora_" in name}


def test_adapters_sit_in_the_last_layers_only_and_none_means_all():
    assert _layers_with_adapters(_adapted(None)) == {0, 1, 2, 3}
    assert _layers_with_adapters(_adapted(2)) == {2, 3}
    assert _target_modules(_llama(), "all-linear", 2) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"
    ]  # what "all-linear" adapts, lm_head left out
    assert _last_layers(_llama(), 9) == [0, 1, 2, 3]  # more than the model has: all of them


def test_backward_does_not_reach_the_layers_below():
    model = _adapted(1)
    seen: list[int] = []
    for i, layer in enumerate(model.get_base_model().model.layers):
        layer.register_full_backward_hook(lambda mod, gin, gout, i=i: seen.append(i))
    ids = torch.randint(0, 64, (1, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert seen == [3]  # the lower three layers never ran a backward pass
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
