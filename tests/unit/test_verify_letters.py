"""Template letters from the real sampler and renderer pass the verifier, every fact bound to its span.

Issue 10: "template letters still pass 100%". A failure lists the most frequent reasons, which name
the fact and what the text says instead of its gold (see clinsynth.letters.verify).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from clinsynth.letters.generate import LetterWriter
from clinsynth.letters.verify import Verdict, bind_facts, verify
from clinsynth.records import iter_patients
from clinsynth.sampling.recipe import Recipe
from clinsynth.sampling.sampler import Sampler
from launchers.plan import stage_config
from launchers.submit import launch


@pytest.fixture(scope="module")
def letters(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Recipe, dict[str, Any]]]:
    runs = tmp_path_factory.mktemp("runs")
    result = launch(
        [
            "+experiment=smoke",
            "pipeline=[ingest]",
            "cluster=debug",
            "tracking=disabled",
            "cohort.patients=25",
            f"paths.runs={runs}",
        ]
    )
    sampler = Sampler(stage_config("sample").sample.sampler, seed=0)
    recipes = [
        r
        for rec in iter_patients(result.plan.stage("ingest").folder.path / "records")
        for r in sampler.recipes(rec)
    ]
    assert len(recipes) > 40
    return list(zip(recipes, LetterWriter("template").write(recipes), strict=True))


def _verdict(recipe: Recipe, letter: dict[str, Any]) -> Verdict:
    return verify(
        recipe,
        letter["text"],
        finish_reasons=letter.get("finish_reasons") or {},
        untagged=letter.get("untagged") or (),
        noise=letter.get("noise") or (),
    )


def test_template_letters_pass_verification(letters):
    failing = [(r.spec_id, v.reasons) for r, letter in letters for v in [_verdict(r, letter)] if not v.ok]
    kinds = Counter(reason.split(":")[0] for _, reasons in failing for reason in reasons)
    examples = [f"{sid}: {reasons[0]}" for sid, reasons in failing[:8]]
    assert not failing, f"{len(failing)}/{len(letters)} template letters fail: {dict(kinds)}\n" + "\n".join(
        examples
    )


def test_every_fact_is_bound_to_its_own_span(letters):
    for recipe, letter in letters[:20]:
        text = letter["text"]
        for b in bind_facts(text, recipe):
            assert b.start >= 0, (recipe.spec_id, b.fact_id, b.kind)
            assert b.sentence_start <= b.start < b.end <= b.sentence_end or b.kind == "tumor", b
            assert text[b.start : b.end].lower() == (b.name or "").lower()
