"""Controllable noise: the typos and OCR confusions real letters carry (`style.noise`, 0 = none).

Typos touch only words that belong to no fact string, so gold stays right. OCR confusions
("Ml" for "M1", "l" for "1", "IX" for "LK") may touch a fact string; then gold still holds the
clean value and the letter records the pair (as in say, as written) in its `noise` list, so the
verifier can tolerate exactly those changes and nothing else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from clinsynth.letters import frames as F
from clinsynth.sampling.recipe import RecipeFact

#: the only words a typo may touch: those of the fact-free sentences (fillers, openings,
#: closings). Cues, "Zyklus", "Tag", labels and fact strings never get one, so every assertion,
#: cycle and value stays readable where it is bound to its fact.
NOISABLE = frozenset(
    w.strip(".,;:()")
    for text in (
        [x for pool in F.FILLER.values() for x in pool]
        + list(F.AZ_EZ)
        + [x for pool in F.OPENINGS.values() for x in pool]
        + list(F.CLOSINGS)
    )
    for w in text.split()
    if len(w.strip(".,;:()")) >= 5 and w.strip(".,;:()").isalpha()
) - frozenset(  # minus every word a frame uses ("Vorgeschichte" is a filler word and a cue)
    w.strip(".,;:()")
    for table in (*F.FRAMES.values(), F.PROCEDURE_DATED)
    for frames in table.values()
    for fr in frames
    for w in fr.split()
)

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


def _whole_word(text: str, word: str) -> int:
    """The first position of `word` not inside a longer word, or -1."""
    at = text.find(word)
    while at >= 0:
        before = text[at - 1] if at else " "
        after = text[at + len(word)] if at + len(word) < len(text) else " "
        if not before.isalnum() and not after.isalnum():
            return at
        at = text.find(word, at + 1)
    return -1


def add_noise(
    text: str,
    protected: Callable[[], Sequence[str]],
    facts: Sequence[RecipeFact],
    rng: random.Random,
    level: float,
) -> tuple[str, list[tuple[str, str]]]:
    """(noised text, [(fact string, as written)]); `level` ~ typos per 100 words; `protected()`
    gives the strings no typo may touch (called only when a typo is due)."""
    tokens = text.split()
    n = int(len(tokens) * level / 100 + rng.random())
    if n:
        guard = "\n".join(protected())
        for _ in range(4 * n):  # a few draws per typo: most tokens are short, numbers or fact words
            if n == 0:
                break
            word = tokens[rng.randrange(len(tokens))].strip(".,;:()[]!?")
            # a word inside any fact (or other protected) string is never touched, anywhere
            if word not in NOISABLE or word in guard:
                continue
            at = _whole_word(text, word)
            if at >= 0:
                text = text[:at] + _typo(word, rng) + text[at + len(word) :]
                n -= 1
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
