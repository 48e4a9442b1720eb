"""A scenario dict (ScenarioConfig.to_dict()) -> TOML text that tomllib reads back to the same dict.

The standard library reads TOML but cannot write it, and the scenario schema
needs only a small part of the language: nested tables, strings, integers,
floats (NaN and infinities included), booleans, lists of scalars and lists
of tables (clients.profiles). Writing a calibrated scenario back as a file
is what lets planning and emulation read the same constants; validating
the result is fedsllm.config's job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"TOML keys must be strings, got {name!r}")
    return name if _BARE_KEY.match(name) else _string(name)


def _string(text: str) -> str:
    # JSON string escapes (\" \\ \n \t \uXXXX ...) are all valid TOML basic-string escapes,
    # and ensure_ascii keeps the file ASCII.
    return json.dumps(text, ensure_ascii=True)


def _float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    # repr always has '.', 'e' or is nan/inf; '1e-06' and '1e+16' are valid TOML floats.
    return repr(x)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(_is_table(v) for v in value)
    )


def toml_value(value: Any) -> str:
    """One inline TOML value: scalar, list of scalars/lists, or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if _is_table(value):
        items = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _emit_table(
    lines: list[str], path: list[str], table: Mapping[str, Any], header: str | None
) -> None:
    """Scalars (and scalar lists) of `table` under `header`, then its sub-tables."""
    scalars = [(k, v) for k, v in table.items() if not (_is_table(v) or _is_table_list(v))]
    nested = [(k, v) for k, v in table.items() if _is_table(v) or _is_table_list(v)]
    if header is not None:
        if lines:
            lines.append("")
        lines.append(header)
    for k, v in scalars:
        lines.append(f"{_key(k)} = {toml_value(v)}")
    for k, v in nested:
        sub = [*path, _key(k)]
        if _is_table(v):
            _emit_table(lines, sub, v, "[" + ".".join(sub) + "]")
        else:
            for item in v:
                _emit_table(lines, sub, item, "[[" + ".".join(sub) + "]]")


def dumps_toml(data: Mapping[str, Any], comment: str = "") -> str:
    """TOML text of a nested dict; `comment` lines go on top as '# ...' lines.

    Top-level scalars come first (TOML assigns keys after a table header to
    that table), then one [table] per nested dict and one [[table]] per
    element of a non-empty list of dicts. An empty list is written as [].
    """
    lines: list[str] = [f"# {line}".rstrip() for line in comment.splitlines()]
    if lines:
        lines.append("")
    body: list[str] = []
    _emit_table(body, [], data, None)
    return "\n".join(lines + body) + "\n"
