"""docs/MODEL.md exists, every reference to it resolves, and every reference in it resolves.

(a) Every repository file that names the model document names it by its
    repository path, docs/MODEL.md.
(b) Every "docs/MODEL.md section N" (also "sections N-M", "sections N and M",
    "docs/MODEL.md N-M") cited anywhere, and every "section N" inside the
    document itself, has a heading "## N." in docs/MODEL.md.
(c) Every backticked path, dotted code name (`package.module.function`,
    `package.module.Class.method`) and scenario field (`channel.bandwidth_hz`,
    `clients.profiles[k].flops`) in docs/MODEL.md exists in the repository.

The checkers are plain functions; the table-driven tests below feed them
broken references, so a checker that stopped detecting breakage would fail.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = "docs/MODEL.md"
DOC_PATH = ROOT / DOC
NAME = "MODEL" + ".md"
"""The bare file name, spelled so that this file never mentions it bare."""

SKIP_DIRS = {
    ".git",
    ".venv",
    "runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "build",
}
SCANNED_SUFFIXES = {".py", ".pyi", ".toml", ".md", ".yml", ".yaml", ".proto", ".sh"}
CODE_PACKAGES = ("fedsllm", "client", "main_server", "fed_server")
"""Top-level packages: a backticked dotted name starting with one is a code reference."""
PATH_SUFFIXES = (".py", ".pyi", ".toml", ".md", ".yml", ".yaml", ".proto", ".json")

BARE = re.compile(r"(?<!docs/)\b" + re.escape(NAME))
CITATION = re.compile(
    re.escape(DOC) + r",?\s+(?:sections?\s+)?(\d+(?:\s*(?:-|,|and)\s*\d+)*)", re.IGNORECASE
)
INTERNAL = re.compile(r"\bsections?\s+(\d+(?:\s*(?:-|,|and)\s*\d+)*)", re.IGNORECASE)
HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)
BACKTICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
FIELD = re.compile(r"^[a-z_]+(?:\[\w*\])?(?:\.(?:[a-z_]\w*|\*)(?:\[\w*\])?)+$")
PATH = re.compile(r"^[\w.-]+(?:/[\w.-]+)*$")


# ---------------------------------------------------------------- checkers


def repo_files(root: Path = ROOT) -> list[Path]:
    """Source and documentation files of the working tree (not .venv, .git, runs, caches)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix in SCANNED_SUFFIXES or name.startswith("Dockerfile"):
                out.append(path)
    return sorted(out)


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def bare_mentions(text: str) -> list[int]:
    """Line numbers where the document is named without its docs/ path."""
    return [line_of(text, m.start()) for m in BARE.finditer(text)]


def section_numbers(spec: str) -> set[int]:
    """'3' -> {3}; '2-5' -> {2, 3, 4, 5}; '3 and 5' -> {3, 5}; '2, 4' -> {2, 4}."""
    out: set[int] = set()
    for item in re.split(r"\s*(?:,|and)\s*", spec):
        lo, _, hi = item.partition("-")
        first = int(lo)
        last = int(hi) if hi else first
        out.update(range(first, last + 1))
    return out


def cited_sections(text: str, pattern: re.Pattern[str] = CITATION) -> list[tuple[int, set[int]]]:
    """(line, section numbers) of every section citation in `text`."""
    return [(line_of(text, m.start()), section_numbers(m.group(1))) for m in pattern.finditer(text)]


def headings(doc_text: str) -> list[int]:
    """Numbers of the "## N." headings, in order."""
    return [int(n) for n in HEADING.findall(doc_text)]


def module_file(parts: list[str], root: Path) -> tuple[Path, list[str]] | None:
    """The longest prefix of `parts` that is a module (a.py or a/__init__.py), and the rest."""
    for i in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:i])
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), parts[i:]
        if (base / "__init__.py").is_file():
            return base / "__init__.py", parts[i:]
    return None


def code_reference_problem(dotted: str, root: Path = ROOT) -> str | None:
    """None when `dotted` names a module, and then a top-level def/class/constant of it,
    and then `def name` (or a class attribute) for every further part; else why not."""
    found = module_file(dotted.split("."), root)
    if found is None:
        return f"`{dotted}`: no such module in the repository"
    path, rest = found
    if not rest:
        return None
    text = path.read_text(encoding="utf-8")
    owner, *attrs = rest
    top = rf"^(?:(?:async\s+)?def|class)\s+{re.escape(owner)}\b|^{re.escape(owner)}\s*[:=]"
    if not re.search(top, text, re.MULTILINE):
        return f"`{dotted}`: no def, class or constant {owner} in {path.relative_to(root)}"
    for attr in attrs:
        member = rf"^\s+(?:async\s+)?def\s+{re.escape(attr)}\b|^\s+{re.escape(attr)}\s*[:=]"
        if not re.search(member, text, re.MULTILINE):
            return f"`{dotted}`: no def {attr} in {path.relative_to(root)}"
    return None


def scenario_field_problem(dotted: str) -> str | None:
    """None when `dotted` ([k] indices allowed, a final * = any field) is a ScenarioConfig
    field path; else why not."""
    from fedsllm.config import ScenarioConfig

    tp: typing.Any = ScenarioConfig
    for part in re.sub(r"\[\w*\]", "", dotted).split("."):
        if part == "*":
            return None
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return f"`{dotted}`: {part} is not a field of {getattr(tp, '__name__', tp)}"
        tp = hints[part]
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
    return None


def path_problem(span: str, root: Path = ROOT) -> str | None:
    if ".." in span.split("/") or not (root / span).exists():
        return f"`{span}`: no such file in the repository"
    return None


def doc_problems(doc_text: str, root: Path = ROOT) -> tuple[list[str], dict[str, int]]:
    """Every broken reference of (c) in a document's text, and how many of each kind it checked."""
    from fedsllm.config import ScenarioConfig

    field_roots = {f.name for f in dataclasses.fields(ScenarioConfig)}
    problems: list[str] = []
    checked = {"paths": 0, "code": 0, "fields": 0}
    for m in BACKTICKED.finditer(doc_text):
        span = m.group(1).strip()
        where = f"{DOC}:{line_of(doc_text, m.start())}"
        problem = None
        if PATH.match(span) and ("/" in span or span.endswith(PATH_SUFFIXES)):
            checked["paths"] += 1
            problem = path_problem(span, root)
        elif DOTTED.match(span) and span.split(".")[0] in CODE_PACKAGES:
            checked["code"] += 1
            problem = code_reference_problem(span, root)
        elif FIELD.match(span) and re.split(r"[.\[]", span)[0] in field_roots:
            checked["fields"] += 1
            problem = scenario_field_problem(span)
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if "../" in doc_text:
        problems.append(f"{DOC}: points outside the repository ('../')")
    return problems, checked


# ---------------------------------------------------------------- the repository


@pytest.fixture(scope="module")
def doc_text() -> str:
    assert DOC_PATH.is_file(), f"{DOC} is missing"
    return DOC_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {
        str(p.relative_to(ROOT)): p.read_text(encoding="utf-8", errors="replace")
        for p in repo_files()
    }


def test_every_mention_names_the_docs_path(texts: dict[str, str]) -> None:
    mentions = [rel for rel, text in texts.items() if NAME in text]
    assert len(mentions) >= 10, f"expected many files citing {DOC}, found {mentions}"
    bad = [f"{rel}:{line}" for rel, text in texts.items() for line in bare_mentions(text)]
    assert not bad, f"name the document {DOC} (a path in the repository) at: {bad}"


def test_doc_sections_are_numbered_in_order(doc_text: str) -> None:
    assert headings(doc_text) == list(range(1, len(headings(doc_text)) + 1))
    assert len(headings(doc_text)) >= 5


def test_every_cited_section_exists(texts: dict[str, str], doc_text: str) -> None:
    have = set(headings(doc_text))
    cites = [(rel, line, n) for rel, text in texts.items() for line, n in cited_sections(text)]
    cites += [(DOC, line, n) for line, n in cited_sections(doc_text, INTERNAL)]
    assert len(cites) >= 30, f"the scan found only {len(cites)} section citations"
    bad = [f"{rel}:{line} cites {sorted(n - have)}" for rel, line, n in cites if n - have]
    assert not bad, f"sections missing from {DOC}: {bad}"


def test_every_reference_in_the_doc_exists(doc_text: str) -> None:
    problems, checked = doc_problems(doc_text)
    assert not problems, "\n".join(problems)
    assert checked["paths"] >= 5 and checked["code"] >= 50 and checked["fields"] >= 20, checked


# ---------------------------------------------------------------- the checkers catch breakage


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"see {DOC} section 3", []),
        (f"see {NAME} section 3", [1]),
        (f"ok\nsee ../shared/spec/{NAME}", [2]),
        (f"A{NAME}", []),  # another file whose name merely ends the same way
    ],
)
def test_bare_mentions(text: str, expected: list[int]) -> None:
    assert bare_mentions(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DOC + " section 3: phi_c", [(1, {3})]),
        (DOC + " sections 2-5", [(1, {2, 3, 4, 5})]),
        (DOC + " sections 3 and 5", [(1, {3, 5})]),
        ("x\n(" + DOC + " 3-5)", [(2, {3, 4, 5})]),
        (DOC + "\n    section 9", [(1, {9})]),
        (DOC + ": omega / R_dl", []),
    ],
)
def test_cited_sections(text: str, expected: list[tuple[int, set[int]]]) -> None:
    assert cited_sections(text) == expected


def test_a_missing_section_is_caught() -> None:
    have = set(headings("## 1. One\n## 2. Two\n"))
    cites = cited_sections("see " + DOC + " sections 2-3")
    assert [sorted(n - have) for _, n in cites] == [[3]]


@pytest.mark.parametrize(
    ("span", "ok"),
    [
        ("fedsllm.delay.rates.round_up", True),
        ("fedsllm.delay.rates.no_such_function", False),
        ("fedsllm.delay.no_such_module.round_up", False),
        ("fedsllm.delay.inputs.DelayInputs.tau_s", True),
        ("fedsllm.delay.inputs.DelayInputs.no_such_property", False),
        ("fedsllm.delay.solvers.NUM_GRID", True),
        ("fed_server.controller.Controller._solve_plan", True),
        ("fedsllm.delay", True),
    ],
)
def test_code_reference_problem(span: str, ok: bool) -> None:
    assert (code_reference_problem(span) is None) is ok


@pytest.mark.parametrize(
    ("span", "ok"),
    [
        ("channel.bandwidth_hz", True),
        ("channel.no_such_field", False),
        ("clients.profiles[k].flops", True),
        ("clients.profiles[k].no_such_field", False),
        ("channel.*", True),
    ],
)
def test_scenario_field_problem(span: str, ok: bool) -> None:
    assert (scenario_field_problem(span) is None) is ok


def test_doc_problems_finds_each_kind_of_broken_reference() -> None:
    text = (
        "## 1. Only\n"
        "`fedsllm/delay/rates.py` `fedsllm/delay/no_such.py` `../shared/x.py`\n"
        "`fedsllm.delay.rates.rate_bps` `fedsllm.delay.rates.rate_bpz`\n"
        "`channel.bandwidth_hz` `channel.bandwith_hz` `AllocationError` `b * c / d`\n"
    )
    problems, checked = doc_problems(text)
    assert checked == {"paths": 3, "code": 2, "fields": 2}
    assert len(problems) == 5, problems
    for broken in ("no_such.py", "../shared/x.py", "rate_bpz", "bandwith_hz", "'../'"):
        assert any(broken in p for p in problems), (broken, problems)
