"""Controllable noise: the typos and OCR confusions real letters carry (`style.noise`, 0 = none).

Typos touch only words that belong to no fact string, so gold stays right. OCR confusions
("Ml" for "M1", "l" for "1", "IX" for "LK") may touch a fact string; then gold still holds the
clean value and the letter records the pair (as in say, as written) in its `noise` list, so the
verifier can tolerate exactly those changes and nothing else.

Heavy noise (level >= SHIFT_MIN_LEVEL) sometimes shifts one column of a table (a lab table's values,
a medication table's schedules) down by one row, as an OCR or copy-paste slip does: the first row
loses its cell, the last cell hangs on a line of its own. Gold keeps what was meant; the letter
records the pair (block as meant, block as written), which the verifier undoes by plain replacement.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from clinsynth.letters import frames as F
from clinsynth.sampling.recipe import RecipeFact

#: a table as the renderer wrote it: rows as (left cells, right cells) whose concatenation
#: (right-stripped) is the row, and the side a shift moves (0 left, 1 right)
Table = tuple[list[tuple[str, str]], int]

#: the lowest level that is "heavy" (the sampler's heavy is 1.0, the renderer's named heavy 1.5)
SHIFT_MIN_LEVEL = 1.0
#: the share of heavy-noise letters with a table of >= SHIFT_MIN_ROWS rows that get one shifted
SHIFT_P = 0.25
SHIFT_MIN_ROWS = 3

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


def shifted_block(table: Table) -> tuple[str, str]:
    """(the block as written, the block with its moving column one row down)."""
    cells, side = table
    meant = "\n".join((a + b).rstrip() for a, b in cells)
    rows = []
    for i in range(len(cells) + 1):
        a = cells[i][0] if i < len(cells) else " " * len(cells[-1][0])
        b = cells[i][1] if i < len(cells) else ""
        if side == 1:  # the right column slides: row i gets row i-1's right cell
            b = cells[i - 1][1] if i else ""
        else:  # the left column slides (its width kept so the right column stays in place)
            a = cells[i - 1][0] if i else " " * len(cells[0][0])
            if i == len(cells):
                b = ""
        rows.append((a + b).rstrip())
    return meant, "\n".join(rows)


def shift_table(
    text: str, tables: Sequence[Table], rng: random.Random, level: float
) -> tuple[str, list[tuple[str, str]]]:
    """(text, [(block as meant, block as written)]): at heavy noise, with chance SHIFT_P, one table
    of >= SHIFT_MIN_ROWS rows that the text holds once gets a column shifted down by one row."""
    if level < SHIFT_MIN_LEVEL:
        return text, []
    blocks = [shifted_block(t) for t in tables if len(t[0]) >= SHIFT_MIN_ROWS]
    # the block must stand once in the text (OCR may have changed a row) and the shift must change it
    blocks = [(m, s) for m, s in blocks if m != s and text.count(m) == 1 and s not in text]
    if not blocks or rng.random() >= SHIFT_P:
        return text, []
    meant, written = blocks[rng.randrange(len(blocks))]
    return text.replace(meant, written), [(meant, written)]
