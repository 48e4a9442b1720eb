"""Loading the scripts under benchmarks/ (not a package) as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def benchmark_script() -> Iterator[Callable[[str], ModuleType]]:
    """load(name): benchmarks/<name>.py as a module, put in sys.modules under
    its name, where a sibling script that imports it (as `import
    wire_throughput as wt`) finds it; load that one first. What sys.modules
    held under those names is put back after the test module."""
    saved: dict[str, ModuleType | None] = {}

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        saved.setdefault(name, sys.modules.get(name))
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    yield load
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
