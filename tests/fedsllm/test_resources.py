"""The memory estimate that refuses runs which cannot fit on this machine."""

from __future__ import annotations

import pytest

from fedsllm.config import load_scenario
from fedsllm.errors import ConfigError
from fedsllm.resources import (
    GIB,
    SKIP_FLAG,
    available_memory_bytes,
    check_memory,
    estimate_memory,
    scenario_memory,
)


def test_estimate_grows_linearly_with_clients_and_model() -> None:
    small = estimate_memory(10, base_params=1_000_000)
    assert estimate_memory(20, 1_000_000).total_bytes - small.total_bytes == pytest.approx(
        10 * small.per_client_bytes
    )
    assert estimate_memory(10, 100_000_000).per_client_bytes > small.per_client_bytes + 700e6
    # A client started on its own imports every library itself.
    alone = estimate_memory(10, 1_000_000, forked=False)
    assert alone.per_client_bytes > 4 * small.per_client_bytes


def test_default_scenario_and_100_clients_fit_and_1000_do_not() -> None:
    """Issue 12: 100 forked clients of the default scenario fit this 24 GiB machine
    (measured: under 14 GB in all); 1000 do not."""
    default = scenario_memory(load_scenario(None))
    assert default.total_bytes < 3 * GIB
    hundred = scenario_memory(load_scenario(None, ["clients.num_clients=100"]))
    assert 8 * GIB < hundred.total_bytes < 14 * GIB
    check_memory(hundred, available_bytes=20 * GIB)
    many = scenario_memory(load_scenario(None, ["clients.num_clients=1000"]))
    assert many.total_bytes > 80 * GIB
    check_memory(default, available_bytes=20 * GIB)
    with pytest.raises(ConfigError) as err:
        check_memory(many, available_bytes=20 * GIB)
    message = str(err.value)
    assert err.value.path == "--clients"
    assert SKIP_FLAG in message and "GiB" in message and "20.0 GiB" in message


def test_unknown_available_memory_does_not_block() -> None:
    check_memory(estimate_memory(1000, 1_000_000), available_bytes=None)


def test_available_memory_reads_memavailable(tmp_path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   2048 kB\n")
    assert available_memory_bytes(meminfo) == 2048 * 1024
    assert available_memory_bytes(tmp_path / "missing") is None


def test_run_refuses_before_creating_the_run_directory(tmp_path, capsys) -> None:
    """Refusal is exit 2, one line naming the figure and the override, nothing written."""
    from fedsllm.cli import main

    out = tmp_path / "run"
    code = main(["run", "--clients", "1500", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert SKIP_FLAG in err and "--clients" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
