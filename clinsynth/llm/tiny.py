"""A tiny random-weight causal LM with a real tokenizer, built offline.

Tests, smoke runs and CPU machines need a model that vLLM and transformers both
load without a hub: this module makes one from a config and an embedded German
clinical text sample. Same spec -> same folder, same weights, same tokenizer, so
generation results are reproducible across machines and runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Bump when the build recipe changes (corpus, template, init): old folders stop matching.
TINY_FORMAT = 1

DEFAULT_SPEC: dict[str, Any] = {
    "arch": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "layers": 2,
    "heads": 2,              # hidden_size / heads = head_dim; vLLM's CPU attention needs >= 32
    "kv_heads": None,        # null: same as heads
    "vocab_size": 1024,      # BPE target; the model gets the tokenizer's actual size
    "max_position_embeddings": 2048,
    "init_std": 0.05,        # a bit larger than usual so logits are not flat (greedy stays robust)
    "eos_scale": 1.0,        # > 1 scales EOS's output row: the model stops early now and then
    "seed": 0,
}

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# One turn per message, each closed by EOS; generation starts after "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)

# Written for this module (no real patient): enough words for a ~1k byte-level BPE vocabulary.
CORPUS = """\
Sehr geehrte Frau Kollegin, sehr geehrter Herr Kollege,
wir berichten über Ihre Patientin, Frau Müller, geboren am 12.03.1958, die sich vom 04.02. bis zum
11.02. in unserer stationären Behandlung befand.
Diagnosen: Mammakarzinom links, ED 09/2023, pT2 pN1a (2/14) M0, G3, ER positiv, PR positiv, HER2 negativ.
Z. n. brusterhaltender Therapie und Sentinel-Lymphknotenbiopsie. Arterielle Hypertonie.
Diabetes mellitus Typ 2, nicht insulinpflichtig. Hypothyreose, substituiert.
Anamnese: Die Patientin stellte sich zur Fortführung der adjuvanten Chemotherapie nach dem
EC-Schema vor. Sie berichtete über leichte Übelkeit an den ersten beiden Tagen nach dem letzten Zyklus,
kein Erbrechen, keine Fieberschübe, keine Dyspnoe. Der Appetit sei reduziert, das Gewicht stabil.
Befund bei Aufnahme: 65-jährige Patientin in gutem Allgemeinzustand und schlankem Ernährungszustand.
ECOG 1. Herz: Herztöne rein, rhythmisch, keine pathologischen Geräusche. Lunge: vesikuläres Atemgeräusch
beidseits, keine Rasselgeräusche. Abdomen: weich, kein Druckschmerz, Darmgeräusche regelrecht.
Mamma links: reizlose Narbe, kein tastbarer Knoten. Axilla frei. Keine peripheren Ödeme.
Labor: Leukozyten 3,1 Tsd/µl, Hämoglobin 11,2 g/dl, Thrombozyten 182 Tsd/µl, Kreatinin 0,8 mg/dl,
GOT 28 U/l, GPT 31 U/l, CRP 0,4 mg/dl. Kalium 4,1 mmol/l, Natrium 139 mmol/l.
Verlauf: Unter antiemetischer Prophylaxe mit Aprepitant, Granisetron und Dexamethason erhielt die
Patientin komplikationslos den dritten Zyklus Epirubicin und Cyclophosphamid. Die Therapie wurde gut
vertragen. Es traten keine allergischen Reaktionen auf. Am Folgetag wurde pegfilgrastim subkutan
verabreicht. Wir konnten die Patientin in stabilem Zustand nach Hause entlassen.
Therapieempfehlung: Wiedervorstellung zum vierten Zyklus in zwei Wochen. Blutbildkontrollen zweimal
wöchentlich beim Hausarzt. Bei Fieber über 38,3 Grad sofortige Vorstellung in unserer Notaufnahme.
Im Anschluss an die Chemotherapie ist eine adjuvante Strahlentherapie der Restbrust geplant, danach
eine endokrine Therapie mit Letrozol über mindestens fünf Jahre.
Medikation bei Entlassung: Ramipril 5 mg 1-0-0, Metformin 1000 mg 1-0-1, L-Thyroxin 75 µg 1-0-0,
Pantoprazol 20 mg 1-0-0, Metoclopramid 10 mg bei Bedarf bis zu dreimal täglich.
Herr Schmidt, geboren am 23.07.1949, wurde uns mit einem neu diagnostizierten Adenokarzinom des Kolons
zugewiesen. Koloskopisch zeigte sich ein stenosierender Tumor im Sigma. Histologisch Adenokarzinom,
G2, RAS-Wildtyp, mikrosatellitenstabil. Im CT Thorax und Abdomen zwei Lebermetastasen im Segment
sieben und acht, keine pulmonalen Filiae. Die Tumorkonferenz empfahl eine systemische Therapie nach dem
FOLFOX-Schema in Kombination mit Panitumumab und eine Reevaluation nach vier Zyklen.
Der Patient klagte über Obstipation und gelegentliche Bauchschmerzen. Der Port wurde komplikationslos
implantiert, die Lagekontrolle war regelrecht. Der erste Zyklus wurde ohne Auffälligkeiten verabreicht.
Begleiterkrankungen: Koronare Herzkrankheit, Z. n. Stentimplantation 2019, Vorhofflimmern unter
Antikoagulation mit Apixaban, chronische Niereninsuffizienz Stadium 3a, Hyperlipidämie.
Frau Wagner, 72 Jahre, mit bekanntem nicht-kleinzelligem Lungenkarzinom des rechten Oberlappens,
Stadium IV, PD-L1 60 Prozent, wurde zur Gabe von Pembrolizumab aufgenommen. Sie berichtete über
zunehmenden Husten und Belastungsdyspnoe. Die Sauerstoffsättigung lag bei 94 Prozent unter Raumluft.
Im Röntgen Thorax kein Hinweis auf eine Pneumonitis. Die Immuntherapie wurde planmäßig fortgeführt.
Schilddrüsenwerte und Kortisol waren im Normbereich. Eine Hautreaktion trat nicht auf.
Herr Becker, 58 Jahre, mit diffus großzelligem B-Zell-Lymphom, Ann-Arbor-Stadium III B, erhielt den
fünften Zyklus R-CHOP. Bei Aufnahme bestand eine Polyneuropathie Grad 1 an beiden Füßen. Vincristin
wurde daher dosisreduziert. Die Zwischenbildgebung im PET-CT zeigte eine komplette metabolische Remission.
Nach Abschluss der Therapie ist eine Nachsorge in dreimonatigen Abständen vorgesehen.
Frau Hoffmann, 61 Jahre, Ovarialkarzinom FIGO IIIC, Z. n. Debulking-Operation, erhielt Carboplatin und
Paclitaxel. Im Verlauf entwickelte sie eine febrile Neutropenie mit Temperaturen bis 39,1 Grad.
Nach Abnahme von Blutkulturen wurde eine empirische Antibiose mit Piperacillin und Tazobactam begonnen.
Die Blutkulturen blieben steril, das Fieber sistierte nach 48 Stunden. Die Leukozyten erholten sich.
Mit freundlichen kollegialen Grüßen, Prof. Dr. med. Richter, Chefarzt, Dr. med. Klein, Oberärztin,
Dr. med. Neumann, Assistenzarzt. Klinik für Hämatologie und Onkologie, Universitätsklinikum.
"""


def resolve_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """Spec with defaults filled in; unknown keys are an error (a typo would silently change nothing)."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise ValueError(f"unknown tiny model spec keys {unknown}; known: {sorted(DEFAULT_SPEC)}")
    out = {**DEFAULT_SPEC, **{k: v for k, v in spec.items() if v is not None}}
    if out["arch"] != "llama":
        raise ValueError(f"tiny model arch {out['arch']!r} is not supported (only 'llama')")
    if out["hidden_size"] % out["heads"]:
        raise ValueError("tiny model hidden_size must be a multiple of heads")
    return out


def spec_hash(spec: dict[str, Any] | None) -> str:
    """Folder name for a spec: changes with the spec, the recipe version and the corpus."""
    payload = {"spec": resolve_spec(spec), "format": TINY_FORMAT, "corpus": CORPUS, "template": CHAT_TEMPLATE}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_tiny_model(spec: dict[str, Any] | None, root: Path) -> Path:
    """Return root/tiny-<hash>, building it first if missing; safe when several processes race."""
    root = Path(root)
    final = root / f"tiny-{spec_hash(spec)}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        _build(resolve_spec(spec), tmp)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp is 0700: others sharing the cache must read it
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_tokenizer(spec: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(spec["vocab_size"]),
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    # No post-processor: BOS comes from the chat template only, so both engines see the same ids.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=int(spec["max_position_embeddings"]),
        clean_up_tokenization_spaces=False,
    )


def _build(spec: dict[str, Any], out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(spec)
    ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in (("bos", BOS), ("eos", EOS), ("pad", PAD))}
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # exactly the tokenizer: a random model must not sample unknown ids
        hidden_size=int(spec["hidden_size"]),
        intermediate_size=int(spec["intermediate_size"]),
        num_hidden_layers=int(spec["layers"]),
        num_attention_heads=int(spec["heads"]),
        num_key_value_heads=int(spec["kv_heads"] or spec["heads"]),
        max_position_embeddings=int(spec["max_position_embeddings"]),
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    # Own init from one generator, in name order: weights depend on the seed, not on transformers' init code.
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    with torch.no_grad():
        for _name, param in sorted(model.named_parameters()):
            if param.dim() == 1:  # norm weights
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * float(spec["init_std"]))
        model.lm_head.weight[ids["eos"]] *= float(spec["eos_scale"])
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "tiny_spec.json").write_text(json.dumps({"spec": spec, "format": TINY_FORMAT}, indent=2) + "\n")
