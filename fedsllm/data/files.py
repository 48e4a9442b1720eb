"""User data files -> sample texts (JSONL or plain text).

JSONL: one JSON object per non-empty line, with a string "text", or string
"input" and "output" joined by " => " (the E2E layout, so prompts and
answers read the same way as the built-in corpus). Plain text: one sample
per non-empty line. Any problem raises ConfigError("data.path", ...) naming
the file and the 1-based line. Tokenizing and splitting are left to others.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedsllm.data.e2e import SEPARATOR
from fedsllm.errors import ConfigError

FILE_SOURCES = ("jsonl", "text")


def _where(path: Path, line_no: int) -> str:
    return f"{path}:{line_no}"


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line, decoded one line at a time
    so a bad byte is reported with its line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("data.path", str(path), "file not found") from None
    except IsADirectoryError:
        raise ConfigError("data.path", str(path), "is a directory, not a file") from None
    except OSError as err:
        raise ConfigError("data.path", str(path), f"cannot read ({err.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for line_no, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                "data.path", _where(path, line_no), f"not valid UTF-8 ({err.reason})"
            ) from None
        if text.strip():
            lines.append((line_no, text))
    return lines


def _jsonl_text(obj: object, where: str) -> str:
    if not isinstance(obj, dict):
        raise ConfigError("data.path", where, "line must be a JSON object")
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise ConfigError("data.path", where, '"text" must be a string')
        return obj["text"]
    if "input" in obj and "output" in obj:
        if not (isinstance(obj["input"], str) and isinstance(obj["output"], str)):
            raise ConfigError("data.path", where, '"input" and "output" must be strings')
        return obj["input"] + SEPARATOR + obj["output"]
    raise ConfigError("data.path", where, 'object needs "text", or "input" and "output"')


def read_texts(path: str | Path, source: str) -> list[str]:
    """All samples of a user file, in file order; `source` is jsonl or text."""
    if source not in FILE_SOURCES:
        raise ConfigError("data.source", source, "must be jsonl or text for a file")
    file_path = Path(path)
    lines = _read_lines(file_path)
    if source == "text":
        texts = [text.strip() for _, text in lines]
    else:
        texts = []
        for line_no, text in lines:
            where = _where(file_path, line_no)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    "data.path", where, f"not valid JSON ({err.msg}, column {err.colno})"
                ) from None
            texts.append(_jsonl_text(obj, where))
    if not texts:
        raise ConfigError("data.path", str(file_path), "holds no samples")
    return texts
