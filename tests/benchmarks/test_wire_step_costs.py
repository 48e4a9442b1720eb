"""The stage-by-stage benchmark (benchmarks/wire_step_costs.py): which steps
leave a stage out, that the server really leaves it out of those steps and
only those, and how a stage's cost is computed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from fedsllm.errors import WireError

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def costs():
    saved = {name: sys.modules.get(name) for name in ("wire_throughput", "wire_step_costs")}
    _load("wire_throughput")
    yield _load("wire_step_costs")
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def test_every_pair_of_steps_has_one_with_and_one_without_in_both_orders(costs) -> None:
    skipped = costs.wt.skipped
    pairs = [(skipped(2 * k), skipped(2 * k + 1)) for k in range(8)]
    assert pairs == [(False, True), (True, False)] * 4


def test_the_server_leaves_out_only_the_named_check_on_skipped_steps(costs) -> None:
    wt = costs.wt
    full = wt._specs(True)
    assert wt.server_specs(True, "finite", 0) == full
    acts, *rest = wt.server_specs(True, "finite", 1)
    assert not acts.require_finite and acts.shape == full[0].shape
    assert rest == full[1:]
    assert [s.shape for s in wt.server_specs(True, "shapes", 2)] == [None] * 3
    assert wt.server_specs(True, "shapes", 3) == full
    assert wt.server_specs(False, "finite", 1) == wt._specs(False)


def test_a_stage_costs_its_median_paired_excess(costs) -> None:
    without = [0.010, 0.020, 0.010, 0.020, 0.010]
    with_ = [0.011, 0.022, 0.011, 0.022, 0.011]  # every pair 10% apart
    q2, q1, q3, us = costs.stage_cost(with_, without)
    assert (round(q1, 6), round(q2, 6), round(q3, 6)) == (1.1, 1.1, 1.1)
    assert math.isclose(us, 0.1 * 0.010 * 1e6)


def test_a_skipped_server_check_lets_through_what_the_client_then_refuses(costs) -> None:
    """With the server's finiteness left out of step 1 (and only there), a NaN
    there is echoed back and refused by the client's own check; the same NaN
    on step 0 or 3, where the server checks, ends the stream at the server."""
    wt = costs.wt
    server = wt._start_server()
    address = f"127.0.0.1:{server.bench_port}"
    acts = torch.randn(*wt.ECHO_SHAPE)
    bad = acts.clone()
    bad[0, 0, 0] = float("nan")
    mask = torch.ones(*wt.ECHO_SHAPE[:2], dtype=torch.int64)
    labels = torch.zeros(*wt.ECHO_SHAPE[:2], dtype=torch.int64)
    try:
        session = costs.StagedSession(address, server_skip="finite")
        assert torch.equal(session.run_step(acts, mask, labels, "train"), acts)  # step 0
        with pytest.raises(WireError, match="activations_grad.data"):
            session.run_step(bad, mask, labels, "train")  # step 1: the server skipped
        session.requests.close()
        session.channel.close()

        session = costs.StagedSession(address, server_skip="finite")
        with pytest.raises(wt.grpc.RpcError) as info:
            session.run_step(bad, mask, labels, "train")  # step 0: the server checks
        assert info.value.code() == wt.grpc.StatusCode.INVALID_ARGUMENT
        assert "activations.data" in info.value.details()
        session.requests.close()
        session.channel.close()
    finally:
        wt.rpc.stop_server(server, 0.5)
