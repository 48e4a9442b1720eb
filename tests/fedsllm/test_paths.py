"""Directories made for a flag are taken back when the input is refused, if still empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsllm import paths


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch) -> None:
    monkeypatch.setattr(paths, "_MADE", [])


def test_only_the_directories_it_made_and_only_empty_ones_are_removed(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    paths.make_dir(existing / "a" / "b")
    paths.make_dir(tmp_path / "c")
    kept = paths.writable_dir(tmp_path / "d" / "e", "--out")
    (kept / "result.json").write_text("{}")  # something was written: a run's, kept
    paths.remove_made_dirs()
    assert existing.is_dir() and not (existing / "a").exists()
    assert not (tmp_path / "c").exists()
    assert (kept / "result.json").is_file()
    assert paths._MADE == []
    paths.remove_made_dirs()  # nothing left to do: a second call is harmless


def test_an_existing_directory_is_never_remembered(tmp_path: Path) -> None:
    paths.make_dir(tmp_path)
    assert paths._MADE == []
    paths.remove_made_dirs()
    assert tmp_path.is_dir()
