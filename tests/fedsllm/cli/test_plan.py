"""`fedsllm plan`: JSON content, tables, and bad flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsllm.cli import main
from fedsllm.delay.inputs import DelayInputs
from fedsllm.delay.solvers import solve_allocation


def test_plan_json_holds_inputs_and_every_policy(capsys: pytest.CaptureFixture) -> None:
    rc = main(["plan", "--clients", "4", "--bandwidth-mhz", "10", "--seed", "2", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    inp = doc["inputs"]
    assert len(inp["gain"]) == 4 and inp["bandwidth_hz"] == 10e6
    assert doc["scenario"]["seed"] == 2
    for key in (
        "power_w",
        "tau_s",
        "client_compute_s",
        "bits_per_iter",
        "omega_bits",
        "noise_psd_w_per_hz",
        "a",
        "v",
    ):
        assert key in inp
    assert {"optimal", "equal", "equal_opt_eta", "opt_fixed_eta", "proportional", "random"} <= set(
        doc["policies"]
    )
    opt = doc["policies"]["optimal"]
    assert len(opt["bandwidth_hz"]) == 4 and len(opt["rate_bps"]) == 4
    assert len(opt["bits_per_round"]) == 4
    # The reported reduction is 1 - T_opt / T_equal of the document's own delays, and real.
    t_opt = opt["total_delay_s"]
    t_equal = doc["policies"]["equal"]["total_delay_s"]
    assert doc["optimal_reduction_vs_equal"] == pytest.approx(1 - t_opt / t_equal, rel=1e-12)
    assert opt["reduction_vs_equal"] == pytest.approx(1 - t_opt / t_equal, rel=1e-12)
    assert 0.0 < doc["optimal_reduction_vs_equal"] < 1.0
    for name, pol in doc["policies"].items():
        assert pol["total_delay_s"] >= t_opt * (1 - 1e-9), name
    # Anyone can recompute the optimum from the document alone.
    fields = {
        k: np.array(v) if isinstance(v, list) else v
        for k, v in inp.items()
        if k in DelayInputs.__dataclass_fields__
    }
    again = solve_allocation(DelayInputs(**fields), "exact")
    assert again.total_delay_s == pytest.approx(opt["total_delay_s"], rel=1e-9)


def test_plan_table_and_cvxpy(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--clients", "3", "--solver", "cvxpy"]) == 0
    out = capsys.readouterr().out
    assert "optimal" in out and "equal_opt_eta" in out and "cvxpy" in out


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--bandwidth-mhz", "-5"], "--bandwidth-mhz: must be > 0, got -5.0"),
        (["--clients", "0"], "--clients: must be >= 1, got 0"),
        (["--set", "convergence.a=-1"], "convergence.a"),
    ],
)
def test_bad_flag_value_exits_2_naming_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["plan", *argv]) == 2
    assert field in capsys.readouterr().err


def test_unparsable_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--clients", "many"])
    assert exc.value.code == 2
    assert "--clients" in capsys.readouterr().err
