"""Packing is exact: a packed row gives the same logits and loss as its examples run one by one.

Tiny random models built from config (no downloads): Llama (hidden 64, 2 layers) and a Gemma-3-shaped
one whose sliding window is shorter than the row, so both mask kinds of masking_utils are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clinsynth.training.collate import (  # noqa: E402
    IGNORE_INDEX,
    PackedCollator,
    PaddedCollator,
    make_collator,
    pack_examples,
    pack_rows,
    packing_mode,
    pad_batch,
    useful_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 128


def llama(attn: str = "sdpa") -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, use_cache=False,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def gemma3() -> torch.nn.Module:
    cfg = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512, use_cache=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(cfg).eval()


def example(n: int, n_prompt: int, seed: int) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}


EXAMPLES = [example(9, 4, 1), example(5, 2, 2), example(12, 7, 3), example(3, 1, 4)]


def separate(model, examples):
    """Per-example logits and the summed token loss (HF shift: logits[t] predicts labels[t+1])."""
    logits, total, count = [], 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        out = model(input_ids=ids, use_cache=False)
        logits.append(out.logits[0])
        lab = torch.tensor(ex["labels"])[1:]
        lp = torch.nn.functional.cross_entropy(out.logits[0, :-1], lab, reduction="sum", ignore_index=-100)
        total += float(lp)
        count += int((lab != IGNORE_INDEX).sum())
    return logits, total / count


@pytest.mark.parametrize("build", [lambda: llama("sdpa"), lambda: llama("eager"), gemma3],
                         ids=["llama-sdpa", "llama-eager", "gemma3-sliding"])
def test_packed_logits_and_loss_equal_separate(build):
    model = build()
    assert packing_mode(model) == "position_ids"
    batch = PackedCollator(pad_id=0, max_len=32)(EXAMPLES)
    assert "attention_mask" not in batch
    with torch.no_grad():
        ref_logits, ref_loss = separate(model, EXAMPLES)
        out = model(**batch, use_cache=False)
    # rows: [0 (9) + 1 (5) + 2 (12) + 3 (3) = 29] fits in 32: one row
    assert batch["input_ids"].shape == (1, 29)
    start = 0
    for ex, ref in zip(EXAMPLES, ref_logits, strict=True):
        n = len(ex["input_ids"])
        torch.testing.assert_close(out.logits[0, start:start + n], ref, atol=1e-5, rtol=1e-5)
        start += n
    assert abs(float(out.loss) - ref_loss) < 1e-5


def test_cross_attention_happens_without_the_boundaries():
    """The check above can fail: with the cache on (or plain causal) the second example sees the first."""
    model = llama()
    batch = PackedCollator(pad_id=0, max_len=32)(EXAMPLES[:2])
    with torch.no_grad():
        ref, _ = separate(model, EXAMPLES[:2])
        cached = model(**batch, use_cache=True).logits[0, 9:14]
    assert (cached - ref[1]).abs().max() > 1e-3
    model.config.use_cache = True
    assert packing_mode(model) == "padded"
    collator, mode = make_collator(model, packing=True, pad_id=0, max_len=32)
    assert mode == "padded" and isinstance(collator, PaddedCollator)


def test_label_mask_at_boundaries_and_padding_rows():
    batch = PackedCollator(pad_id=0, max_len=16)(EXAMPLES)
    # first-fit in order: row0 = ex0 (9) + ex1 (5), ex2 (12) opens row1, ex3 (3) does not fit row0
    # (14 + 3 > 16) and goes to row1
    assert pack_rows(EXAMPLES, 16) == [[0, 1], [2, 3]]
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert ids.shape == (2, 15)
    assert pos[0].tolist() == [*range(9), *range(5), 0]  # one pad token, position 0
    assert labels[0, 9] == IGNORE_INDEX                   # ex1's first token: not predicted from ex0
    assert labels[0, 10:14].tolist() == EXAMPLES[1]["labels"][1:]
    assert labels[0, :9].tolist() == [IGNORE_INDEX, *EXAMPLES[0]["labels"][1:]]
    assert labels[0, 14] == IGNORE_INDEX
    assert labels[1, 12] == IGNORE_INDEX and pos[1, 12] == 0
    assert useful_tokens(batch) == sum(len(e["input_ids"]) for e in EXAMPLES)


def test_two_padded_rows_match_separate():
    model = llama()
    batch = PackedCollator(pad_id=0, max_len=16)(EXAMPLES)
    with torch.no_grad():
        ref, _ = separate(model, EXAMPLES)
        out = model(**batch, use_cache=False).logits
    torch.testing.assert_close(out[0, 9:14], ref[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :12], ref[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 12:15], ref[3], atol=1e-5, rtol=1e-5)


def test_padded_collator_matches_separate():
    model = llama()
    batch = PaddedCollator(pad_id=0)(EXAMPLES)
    assert batch["labels"][3, 3:].eq(IGNORE_INDEX).all() and batch["attention_mask"][3].sum() == 3
    assert useful_tokens(batch) == 29
    with torch.no_grad():
        ref, ref_loss = separate(model, EXAMPLES)
        out = model(**batch, use_cache=False)
    for i, ex in enumerate(EXAMPLES):
        n = len(ex["input_ids"])
        torch.testing.assert_close(out.logits[i, :n], ref[i], atol=1e-5, rtol=1e-5)
    assert abs(float(out.loss) - ref_loss) < 1e-5


def test_prepacked_rows_and_flattening():
    rows = pack_examples(EXAMPLES, 16)
    assert [r["n_examples"] for r in rows] == [2, 2]
    a = PackedCollator(pad_id=0, max_len=16)(rows)
    b = PackedCollator(pad_id=0, max_len=16)(EXAMPLES)
    for k in a:
        assert torch.equal(a[k], b[k])
    flat = PackedCollator(pad_id=0, max_len=16, flatten=True)(EXAMPLES)
    assert flat["input_ids"].shape == (1, 29)
    assert flat["position_ids"][0].tolist() == [*range(9), *range(5), *range(12), *range(3)]


def test_pack_rows_respects_max_len_never_splits_and_is_deterministic():
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(2, 100, (500,), generator=g).tolist()
    rows = pack_rows(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(500))  # each example once, whole
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert all(r == sorted(r) for r in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert rows == pack_rows(lengths, 128)
    # first-fit: no later row's first example would have fit in an earlier row at that moment
    assert len(rows) <= 1.25 * sum(lengths) / 128 + 1


def test_too_long_example_is_a_clear_error():
    with pytest.raises(ValueError, match=r"example 2 has 12 tokens, more than the packed row length 10"):
        pack_rows(EXAMPLES, 10)
    with pytest.raises(ValueError, match="2 or more"):
        pad_batch([{"input_ids": [5], "labels": [5]}], 0)


def test_gpu_check_script_runs_tiny_on_cpu(tmp_path):
    """tests/gpu/train_gpu_check.py's code path (both loops, the packed collator) executes on CPU."""
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/gpu/train_gpu_check.py"), "--tiny", "--steps", "1",
         "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    report = json.loads(out.read_text())
    assert report["padded"]["useful_tokens"] > 0 and report["packed"]["useful_tokens"] > 0
    assert report["ratio"] > 0 and report["packing_mode"] == "position_ids"


def test_packing_mode_sees_through_peft_and_ddp_style_wrappers():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))

    class Wrapper(torch.nn.Module):  # DDP / DeepSpeed engines keep the model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.config = {"not": "a model config"}

    assert packing_mode(model) == "position_ids"
    assert packing_mode(Wrapper(model)) == "position_ids"
    model.get_base_model().config.use_cache = True
    assert packing_mode(Wrapper(model)) == "padded"
    flash = llama()
    flash.config._attn_implementation_internal = "flash_attention_2"  # the attribute the setter checks
    collator, mode = make_collator(flash, packing=True, pad_id=0, max_len=32)
    assert mode == "position_ids" and collator.flatten
