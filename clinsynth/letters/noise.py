"""Controllable noise: the typos and OCR confusions real letters carry (`style.noise`, 0 = none).

Typos touch only words that belong to no fact string, so gold stays right. OCR confusions
("Ml" for "M1", "l" for "1", "IX" for "LK") may touch a fact string; then gold still holds the
clean value and the letter records the pair (as in say, as written) in its `noise` list, so the
verifier can tolerate exactly those changes and nothing else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from clinsynth.sampling.recipe import RecipeFact

_WORD = re.compile(r"[A-Za-zÄÖÜäöüß]{5,}")
#: OCR confusions inside fact strings: (pattern, replacement)
OCR_FACT = (
    (re.compile(r"M1"), "Ml"),
    (re.compile(r"N1"), "Nl"),
    (re.compile(r"T1"), "Tl"),
    (re.compile(r"\bLK\b"), "IX"),
)
#: OCR confusions in free text
OCR_TEXT = (("LK", "IX"), ("rn", "m"), ("ll", "Il"), ("ü", "ii"))


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:  # drop one letter
        return word[:i] + word[i + 1 :]
    if op == 2:  # double one letter
        return word[:i] + word[i] + word[i:]
    for a, b in OCR_TEXT:  # an OCR confusion where one fits, else a swap
        if a in word:
            return word.replace(a, b, 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _spans(text: str, protected: Sequence[str]) -> list[tuple[int, int]]:
    out = []
    for s in set(protected):
        if not s or len(s) < 1:
            continue
        start = 0
        while True:
            i = text.find(s, start)
            if i < 0:
                break
            out.append((i, i + len(s)))
            start = i + 1
    return out


def add_noise(
    text: str, protected: Sequence[str], facts: Sequence[RecipeFact], rng: random.Random, level: float
) -> tuple[str, list[tuple[str, str]]]:
    """(noised text, [(fact string, as written)]); `level` ~ typos per 100 words."""
    spans = _spans(text, protected)
    words = [m for m in _WORD.finditer(text) if not any(a < m.end() and m.start() < b for a, b in spans)]
    n = int(len(text.split()) * level / 100 + rng.random())
    chosen = sorted(rng.sample(words, min(n, len(words))), key=lambda m: m.start(), reverse=True)
    for m in chosen:
        text = text[: m.start()] + _typo(m.group(), rng) + text[m.end() :]
    noised: list[tuple[str, str]] = []
    if rng.random() < min(1.0, level / 3):  # OCR in a fact string: at level 0.3 about one letter in ten
        candidates = [
            str(v)
            for f in facts
            if f.kind == "tumor"
            for k, v in f.say.items()
            if k == "tnm" and isinstance(v, str) and v
        ]
        candidates += [str(f.say.get("name")) for f in facts if "LK" in str(f.say.get("name") or "")]
        rng.shuffle(candidates)
        for original in candidates:
            for pat, rep in OCR_FACT:
                if pat.search(original) and text.count(original) == 1:
                    changed = pat.sub(rep, original, count=1)
                    text = text.replace(original, changed)
                    noised.append((original, changed))
                    break
            if noised:
                break
    return text, noised
