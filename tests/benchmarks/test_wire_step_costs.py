"""The stage-by-stage benchmark (benchmarks/wire_step_costs.py): which steps
leave a stage out, that the server really leaves it out of those steps and
only those, and how a stage's cost is computed."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedsllm.errors import WireError


@pytest.fixture(scope="module")
def costs(benchmark_script):
    benchmark_script("wire_throughput")
    return benchmark_script("wire_step_costs")


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
    assert tuple(rest) == full[1:]
    # The mask's and the labels' value checks, and nothing else.
    assert [s.check is not None for s in full] == [False, True, True]
    assert wt.server_specs(True, "values", 0) == full
    unchecked = wt.server_specs(True, "values", 1)
    assert [s.check for s in unchecked] == [None] * 3
    assert [dataclasses.replace(s, check=None) for s in full] == list(unchecked)
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
    on step 0, where the server checks, ends the stream at the server."""
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
        session.cancel()

        session = costs.StagedSession(address, server_skip="finite")
        with pytest.raises(wt.grpc.RpcError) as info:
            session.run_step(bad, mask, labels, "train")  # step 0: the server checks
        assert info.value.code() == wt.grpc.StatusCode.INVALID_ARGUMENT
        assert "activations.data" in info.value.details()
        session.cancel()
    finally:
        wt.rpc.stop_server(server, 0.5)


def _echo_inputs(wt):
    acts = torch.randn(*wt.ECHO_SHAPE)
    mask = torch.ones(*wt.ECHO_SHAPE[:2], dtype=torch.int64)
    labels = torch.zeros(*wt.ECHO_SHAPE[:2], dtype=torch.int64)
    return acts, mask, labels


def test_the_server_leaves_out_value_checks_and_reply_building_on_skipped_steps(costs) -> None:
    wt = costs.wt
    server = wt._start_server()
    address = f"127.0.0.1:{server.bench_port}"
    acts, mask, labels = _echo_inputs(wt)
    out_of_range = torch.full_like(labels, wt.VOCAB)
    try:
        # values: a label past the vocabulary passes on step 1, not on step 0
        session = costs.StagedSession(address, server_skip="values")
        session.step = 1
        assert torch.equal(session.run_step(acts, mask, out_of_range, "train"), acts)
        session.step = 0
        with pytest.raises(wt.grpc.RpcError) as info:
            session.run_step(acts, mask, out_of_range, "train")
        assert "labels" in info.value.details()
        session.cancel()

        # reply: steps 1 and 2 get step 0's reply again; step 3 its own
        session = costs.StagedSession(address, server_skip="reply")
        sent = [acts * k for k in range(1, 5)]
        got = [session.run_step(a, mask, labels, "train") for a in sent]
        assert [torch.equal(g, sent[0]) for g in got[:3]] == [True, True, True]
        assert torch.equal(got[3], sent[3])
        session.close()
    finally:
        wt.rpc.stop_server(server, 0.5)


def _bare_session(costs, client_skip: str):
    """A StagedSession without a stream, for its per-step choices alone."""
    session = costs.StagedSession.__new__(costs.StagedSession)
    session.client_skip = client_skip
    session._last_parts = []
    session.chunk_bytes = 1024
    session.shape = (1, 2, 3)
    return session


def test_the_client_leaves_out_its_finiteness_check_on_skipped_steps(costs) -> None:
    wt = costs.wt
    session = _bare_session(costs, "finite")
    result = wt.StepResultInfo(
        round=0, step=0, loss=0.0, num_tokens=0, server_compute_s=0.0, tensor_names=()
    )
    checked = [
        session._grad_specs(dataclasses.replace(result, step=step))[0].require_finite
        for step in range(4)
    ]
    assert checked == [not wt.skipped(step) for step in range(4)] == [True, False, False, True]


def test_the_client_resends_its_last_parts_on_skipped_steps(costs) -> None:
    wt = costs.wt
    session = _bare_session(costs, "build")
    frames = [wt.tensor_to_frame("activations", torch.randn(1, 2, 3))]

    def header(step: int):
        return wt.StepHeaderInfo(
            round=0, step=step, mode="train", downlink_bps=0.0, tensor_names=("activations",)
        )

    built = session._requests(header(0), frames)
    for part in built:
        part.pieces()
    again = session._requests(header(1), frames)
    assert again is built and all(part._pieces is None for part in again)
    fresh = session._requests(header(3), frames)
    assert fresh is not built and fresh[0].header == header(3)


def test_one_stage_at_a_time(costs) -> None:
    with pytest.raises(ValueError, match="one stage at a time"):
        costs.StagedSession("127.0.0.1:1", client_skip="build", server_skip="values")
