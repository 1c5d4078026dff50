"""The extract stage id follows what the letters say, not when they were touched: names, sizes and the
sha256 of every external and development letter enter the fingerprint; mtimes do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clinsynth.extraction.documents import fingerprint


@pytest.fixture
def letters(tmp_path: Path) -> Path:
    folder = tmp_path / "letters"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Diagnosen: Kolonkarzinom.", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Diagnosen: Melanom.", encoding="utf-8")
    return folder


def test_touching_a_letter_keeps_the_fingerprint_and_a_changed_byte_changes_it(letters: Path) -> None:
    before = fingerprint(str(letters), dev_letters=False)
    assert before is not None and before["letters"]["files"] == 2
    st = (letters / "a.txt").stat()
    os.utime(letters / "a.txt", ns=(st.st_atime_ns + 10**12, st.st_mtime_ns + 10**12))  # a copy, a touch
    assert fingerprint(str(letters), dev_letters=False) == before
    (letters / "a.txt").write_text("Diagnosen: Kolonkarzinum.", encoding="utf-8")  # same size, one byte
    assert (letters / "a.txt").stat().st_size == st.st_size
    changed = fingerprint(str(letters), dev_letters=False)
    assert changed != before
    (letters / "a.txt").rename(letters / "c.txt")  # same bytes under another name
    assert fingerprint(str(letters), dev_letters=False) not in (before, changed)


def test_the_dev_letters_are_fingerprinted_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "grascco"
    folder.mkdir()
    (folder / "Meyr.txt").write_text("Diagnosen: Kolonkarzinom.", encoding="utf-8")  # a stand-in
    monkeypatch.setenv("CLINSYNTH_GRASCCO", str(folder))
    before = fingerprint(None, dev_letters=True)
    assert before is not None and before["dev"]["files"] == 1
    os.utime(folder / "Meyr.txt", ns=(0, 0))
    assert fingerprint(None, dev_letters=True) == before
    (folder / "Meyr.txt").write_text("Diagnosen: Kolonkarzinoma", encoding="utf-8")
    assert fingerprint(None, dev_letters=True) != before
