"""docs/INTERFACES.md's promise about fedsllm.data: every name its Data section
names, and that one of fedsllm/data/*.py defines at module level, is
importable from the package itself (the lazy `fedsllm.data.__getattr__`)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_section(text: str) -> str:
    """The INTERFACES.md section "## Data — fedsllm/data/", up to the next heading."""
    match = re.search(r"^## Data\b.*?$(.*?)(?=^## )", text, re.S | re.M)
    assert match, "docs/INTERFACES.md has no '## Data' section"
    return match.group(1)


def named_in(section: str) -> set[str]:
    """Identifiers opening a backticked span (`name`, `name(...)`, `Name(...)`)."""
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", section))


def module_level_names(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


def test_the_section_reader_finds_names() -> None:
    section = data_section("## Data — x\n- a: `foo(x)`, `Bar` and `baz.qux`\n## Next\n`nope`")
    assert named_in(section) == {"foo", "Bar", "baz"}


def test_every_data_name_the_doc_lists_is_importable_from_the_package() -> None:
    section = data_section((ROOT / "docs" / "INTERFACES.md").read_text())
    defined = module_level_names(ROOT / "fedsllm" / "data")
    listed = named_in(section) & defined
    assert {"ByteTokenizer", "HFTokenizer", "render_text", "client_sizes"} <= listed
    package = importlib.import_module("fedsllm.data")
    missing = sorted(name for name in listed if not hasattr(package, name))
    assert not missing, (
        f"named in docs/INTERFACES.md but not importable from fedsllm.data: {missing}"
    )
    assert set(package.__all__) >= listed
