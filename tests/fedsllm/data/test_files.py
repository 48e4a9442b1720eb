"""User data files: accepted layouts and errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsllm.data.files import read_texts
from fedsllm.errors import ConfigError


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_jsonl_text_and_input_output(tmp_path) -> None:
    path = _write(
        tmp_path,
        "d.jsonl",
        b'{"text": "first sample"}\n\n'
        b'{"input": "name[Aromi]", "output": "Aromi is a pub.", "extra": 1}\r\n'
        b'  {"text": "caf\\u00e9"}  \n',
    )
    assert read_texts(path, "jsonl") == [
        "first sample",
        "name[Aromi] => Aromi is a pub.",
        "caf\u00e9",
    ]


def test_plain_text_one_sample_per_non_empty_line(tmp_path) -> None:
    path = _write(tmp_path, "d.txt", "\ufeffone\n\n  two  \n   \nthree".encode())
    assert read_texts(path, "text") == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b'{"text": "ok"}\n{"text": "broken\n', 2, "not valid JSON"),
        (b'{"text": "ok"}\n\n[1, 2]\n', 3, "JSON object"),
        (b'{"txt": "typo"}\n', 1, '"text"'),
        (b'{"text": 5}\n', 1, "must be a string"),
        (b'{"input": "a", "output": null}\n', 1, "must be strings"),
        (b'{"text": "ok"}\n{"text": "\xff"}\n', 2, "UTF-8"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, line, reason) -> None:
    path = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(ConfigError) as err:
        read_texts(path, "jsonl")
    assert err.value.path == "data.path"
    assert err.value.value == f"{path}:{line}"
    assert reason in err.value.reason
    assert f"bad.jsonl:{line}" in str(err.value)


def test_missing_and_empty_files(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as err:
        read_texts(missing, "text")
    assert err.value.path == "data.path"
    assert "nope.txt" in str(err.value)
    assert "not found" in err.value.reason
    empty = _write(tmp_path, "empty.txt", b"\n  \n")
    with pytest.raises(ConfigError) as err:
        read_texts(empty, "text")
    assert "no samples" in err.value.reason
    with pytest.raises(ConfigError) as err:
        read_texts(tmp_path, "text")
    assert "directory" in err.value.reason
