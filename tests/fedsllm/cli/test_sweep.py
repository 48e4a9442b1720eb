"""`fedsllm sweep`: CSV and PNG files, and bad flags."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedsllm.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_sweep_writes_csv_and_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(
        [
            "sweep",
            "--param",
            "num_clients",
            "--values",
            "2,4",
            "--seeds",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    with open(tmp_path / "sweep_num_clients.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["num_clients"]) for r in rows] == [2.0, 4.0]
    for r in rows:
        assert float(r["T_optimal_s"]) <= float(r["T_equal_s"])
        assert 0.0 <= float(r["reduction_optimal_vs_equal"]) < 1.0
    assert (tmp_path / "sweep_num_clients.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "Average delay reduction" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--param", "rank", "--values", "1"], "--param"),
        (["--param", "bandwidth_mhz", "--values", "5,x"], "--values"),
        (
            ["--param", "bandwidth_mhz", "--values", "0"],
            "--values: bandwidth_mhz 0 gives channel.bandwidth_hz: must be > 0",
        ),
        (
            ["--param", "num_clients", "--values", "2,0"],
            "--values: num_clients 0 gives clients.num_clients: must be >= 1",
        ),
        (["--values", "1"], "--param"),
        (["--paper", "--param", "num_clients"], "--param"),
        (["--paper", "--values", "5,10"], "--values"),
    ],
)
def test_bad_sweep_flags_exit_2(
    argv: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["sweep", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert field in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before any sweep file was written


def test_a_missing_flag_names_no_value(capsys: pytest.CaptureFixture) -> None:
    """Nothing was given, so the message ends with what to do, not 'got None'."""
    assert main(["sweep", "--values", "1"]) == 2
    err = capsys.readouterr().err
    assert "--param: required unless --paper" in err
    assert "None" not in err
