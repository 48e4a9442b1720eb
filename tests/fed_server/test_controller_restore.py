"""The controller's state through the fed server's store: a restarted fed server
keeps the plan, the registrations and channel reports, and the version count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fed_server.controller import Controller
from fedsllm.config import load_scenario
from fedsllm.errors import StateError
from fedsllm.model.counts import count_scenario
from fedsllm.state import FedServerStore, InMemoryBackend
from fedsllm.wire.messages import ChannelReportInfo, RegisterInfo

NUM_CLIENTS = 3


def _scenario():
    return load_scenario(
        None,
        [
            "data.seq_len=32",
            f"clients.num_clients={NUM_CLIENTS}",
            "policy.name='optimal'",
            "seed=3",
        ],
    )


@pytest.fixture(scope="module")
def counts():
    return count_scenario(_scenario())


def _controller(counts, store: FedServerStore) -> Controller:
    return Controller(
        _scenario(), counts=counts, clock=lambda: 1.0, on_change=store.save_controller
    )


def _register(ctrl: Controller, k: int, flops_scale: float) -> None:
    profile = ctrl.scenario.profile(k)
    ctrl.register(
        RegisterInfo(
            client_id=k,
            num_samples=100 + k,
            flops=profile.flops * flops_scale,
            tx_power_dbm=profile.tx_power_dbm,
            distance_m=0.0,
            gain_db=0.0,
        )
    )


def _shares(ctrl: Controller) -> np.ndarray:
    return np.array([ctrl.current(k).bandwidth_hz for k in range(NUM_CLIENTS)])


def test_a_restored_controller_gives_the_same_plan_shares_and_later_versions(counts) -> None:
    store = FedServerStore(InMemoryBackend())
    first = _controller(counts, store)
    _register(first, 0, 0.5)  # before round 0: saved without a publication
    first.start_round(0)
    _register(first, 1, 2.0)
    _register(first, 2, 1.0)  # the profile the scenario gave it: no new allocation
    first.report_channel(ChannelReportInfo(client_id=2, gain_db=-70.0, distance_m=0.0))
    first.start_round(1)
    saved = store.load().controller
    assert saved == first.state_dict()
    assert saved["version"] == first.version == 4
    assert saved["registered"]["2"]["num_samples"] == 102  # still recorded

    again = _controller(counts, store)
    again.restore(store.load().controller)
    assert again.plan == first.plan
    assert again.snapshot().registered == first.snapshot().registered
    version = again.start_round(1)
    assert version == first.version + 1  # a subscriber at v4 gets this one
    np.testing.assert_array_equal(_shares(again), _shares(first))
    assert again.current(0).num_rounds == first.current(0).num_rounds


def test_a_saved_plan_wins_over_a_different_solve(counts) -> None:
    store = FedServerStore(InMemoryBackend())
    first = _controller(counts, store)
    first.start_round(0)
    state = first.state_dict()
    state["plan"] = dataclasses.asdict(dataclasses.replace(first.plan, num_rounds=2))
    again = _controller(counts, store)
    again.restore(state)
    assert again.plan.num_rounds == 2


def test_restore_after_a_round_started_is_refused(counts) -> None:
    store = FedServerStore(InMemoryBackend())
    ctrl = _controller(counts, store)
    ctrl.start_round(0)
    with pytest.raises(StateError, match="after a round started"):
        ctrl.restore(ctrl.state_dict())


@pytest.mark.parametrize("change", ["register", "report_channel", "start_round"])
def test_a_change_the_store_cannot_save_is_not_made(counts, tmp_path, change: str) -> None:
    """The state is saved before it is taken: on a full disk the call fails with
    StorageError (UNAVAILABLE to the peer), the controller is as before, and the
    same call again, once the disk has room, makes the change and saves it
    (before, the change stayed in memory, and a retried Register found nothing
    changed and never saved it)."""
    from fedsllm.state import open_backend
    from fedsllm.state.store import StorageError
    from tests.fed_server._stores import FullDisk

    disk = FullDisk(tmp_path / "state")
    store = FedServerStore(disk)
    ctrl = _controller(counts, store)
    _register(ctrl, 0, 1.0)
    ctrl.start_round(0)
    calls = {
        "register": lambda: _register(ctrl, 1, 2.0),
        "report_channel": lambda: ctrl.report_channel(
            ChannelReportInfo(client_id=0, gain_db=-70.0, distance_m=0.0)
        ),
        "start_round": lambda: ctrl.start_round(1),
    }
    before = ctrl.state_dict()
    disk.full = True
    with pytest.raises(StorageError):
        calls[change]()
    assert ctrl.state_dict() == before
    assert store.load().controller == before
    disk.full = False
    calls[change]()
    assert ctrl.state_dict() != before
    assert FedServerStore(open_backend(tmp_path / "state")).load().controller == ctrl.state_dict()
