"""compile_templates: the generate stage parses every letter and prompt template while its engine
starts, so no chunk parses one (the parse used to land in the first chunk with the engine idle)."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from clinsynth.letters import prompts as P
from clinsynth.letters import render as R
from clinsynth.letters.generate import LetterWriter, compile_templates
from clinsynth.llm.backends import GenResult
from launchers.config import compose_config
from tests.unit import render_recipes as RR


class _Echo:
    """A backend that answers every request with a fixed text (no engine)."""

    name, model, sampling = "echo", "echo", {"temperature": 1.0}

    def generate(self, requests: Any) -> list[GenResult]:
        return [GenResult(r.key, "Der Patient stellte sich vor.", 10, 5, "stop", 0.0) for r in requests]


@pytest.fixture(scope="module")
def prompts() -> dict[str, str]:
    return dict(compose_config(["+experiment=smoke_hybrid"])["generate"]["prompts"])


def _cold() -> None:
    """Forget every parsed template (other tests in this process may have parsed them)."""
    P._template.cache_clear()
    R._template.cache_clear()
    R.environment.cache_clear()


def _parses_while_writing(prompts: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    facts = [RR.dx("diagnosen", "present", "Mammakarzinom", "C50.4"), RR.med("medikation", "present", "X")]
    recipe = RR.recipe("s1", "Entlassungsbrief", "female", facts, 300)
    writer = LetterWriter("hybrid", seed=1, backend=_Echo(), prompts=prompts)
    calls = []
    parse = jinja2.Environment._parse

    def counting(self: jinja2.Environment, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[1] if len(args) > 1 else None)
        return parse(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(jinja2.Environment, "_parse", counting)
        writer.write([recipe])
    return len(calls)


def test_after_compile_templates_writing_a_letter_parses_no_template(prompts, monkeypatch):
    _cold()
    assert _parses_while_writing(prompts, monkeypatch) > 0  # control: a cold process parses while writing
    _cold()
    n = compile_templates(prompts)
    assert n == len(list(R.TEMPLATES.rglob("*.j2"))) + len(prompts)
    assert _parses_while_writing(prompts, monkeypatch) == 0


def test_a_broken_prompt_template_fails_in_compile_templates(prompts):
    with pytest.raises(jinja2.TemplateSyntaxError):
        compile_templates({**prompts, "section": "{% if facts %}unclosed"})
