"""delay_inputs: scenario -> DelayInputs, and DelayInputs' own validation."""

from __future__ import annotations

import numpy as np
import pytest

from fedsllm.config import load_scenario
from fedsllm.delay.inputs import delay_inputs
from fedsllm.errors import ConfigError
from fedsllm.link.channel import client_gains
from fedsllm.model.counts import count_scenario


def test_inputs_follow_scenario_and_counts() -> None:
    scen = load_scenario(
        None,
        [
            "clients.num_clients=4",
            "training.batch_size=4",
            "devices.server_flops=1e10",
            "devices.aggregation_s=0.5",
            "clients.profiles=[{flops=1e9}, {}, {}, {}]",
        ],
    )
    counts = count_scenario(scen)
    inp = delay_inputs(scen)
    assert inp.num_clients == 4
    np.testing.assert_allclose(
        inp.client_compute_s, 4 * counts.phi_c / np.array([1e9, 2e9, 2e9, 2e9])
    )
    np.testing.assert_allclose(inp.server_compute_s, 4 * counts.phi_s / 1e10)
    np.testing.assert_allclose(inp.bits_per_iter, 8 * 4 * counts.smashed_bytes)
    np.testing.assert_allclose(inp.omega_bits, 8 * counts.client_adapter_bytes)
    np.testing.assert_array_equal(inp.downlink_iter_s, 0.0)
    np.testing.assert_array_equal(inp.gain, client_gains(scen))
    assert inp.aggregation_s == 0.5
    assert inp.bandwidth_hz == scen.channel.bandwidth_hz
    assert inp.data_sizes.sum() == scen.data.num_train_samples
    np.testing.assert_allclose(inp.tau_s, inp.client_compute_s + inp.server_compute_s)
    assert not inp.gain.flags.writeable


def test_finite_downlink_adds_terms() -> None:
    scen = load_scenario(None, ["channel.downlink_bps=1e7"])
    counts = count_scenario(scen)
    inp = delay_inputs(scen, counts=counts)
    beta = scen.training.batch_size
    np.testing.assert_allclose(inp.downlink_iter_s, 8 * beta * counts.gradient_bytes / 1e7)
    np.testing.assert_allclose(inp.adapter_downlink_s, 8 * counts.client_adapter_bytes / 1e7)


def test_fading_changes_gains_by_round() -> None:
    scen = load_scenario(None, ['channel.fading="rayleigh"'])
    assert not np.allclose(delay_inputs(scen, 0).gain, delay_inputs(scen, 1).gain, atol=0)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"bandwidth_hz": 0.0}, "DelayInputs.bandwidth_hz"),
        ({"power_w": np.array([0.01, -1.0, 0.01])}, "DelayInputs.power_w[1]"),
        ({"bits_per_iter": np.array([1.0, 2.0])}, "DelayInputs.bits_per_iter"),
        ({"client_compute_s": np.array([0.1, np.nan, 0.1])}, "DelayInputs.client_compute_s[1]"),
        ({"a": -1.0}, "DelayInputs.a"),
    ],
)
def test_bad_inputs_name_the_field(make_inputs, change: dict, field: str) -> None:
    inp = make_inputs(0, 3)
    with pytest.raises(ConfigError) as err:
        inp.replace(**change)
    assert err.value.path == field


def test_zero_clients_rejected(make_inputs) -> None:
    inp = make_inputs(0, 3)
    empty = np.zeros(0)
    with pytest.raises(ConfigError) as err:
        inp.replace(
            gain=empty,
            power_w=empty,
            client_flops=empty,
            data_sizes=empty,
            client_compute_s=empty,
            server_compute_s=empty,
            downlink_iter_s=empty,
            adapter_downlink_s=empty,
            bits_per_iter=empty,
            omega_bits=empty,
        )
    assert err.value.path == "clients.num_clients"


@pytest.mark.parametrize("a", [0.999, 0.5, 1e-6])
def test_rounds_constant_below_one_is_refused(make_inputs, a: float) -> None:
    """N(eta) = a / (1 - eta) < 1 for eta < 1 - a: a plan of less than one round. Refused
    where plan, sweep and the controller all pass (DelayInputs), naming the scenario field
    and the way out."""
    with pytest.raises(ConfigError) as err:
        make_inputs(0, 3).replace(a=a)
    assert err.value.path == "convergence.a" and err.value.value == a
    assert "fedsllm calibrate" in err.value.reason
    with pytest.raises(ConfigError) as err:
        delay_inputs(load_scenario(None, [f"convergence.a={a}"]))
    assert err.value.path == "convergence.a"


def test_rounds_constant_of_one_and_the_default_are_accepted(make_inputs) -> None:
    assert make_inputs(0, 3).replace(a=1.0).a == 1.0
    assert delay_inputs(load_scenario(None)).a == 4.0
