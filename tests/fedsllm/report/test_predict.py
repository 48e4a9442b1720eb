"""The report's per-client prediction (fedsllm.report.predict.predict_client):
the propagation delay is charged once per message a shaper actually paced."""

from __future__ import annotations

import math

import pytest

from fedsllm.report.phases import ClientMeasured
from fedsllm.report.predict import RatesInForce, predict_client

DELAY_S = 0.01


def _measured() -> ClientMeasured:
    return ClientMeasured(
        client=0,
        num_steps=3,
        num_uplink_msgs=3,
        num_downlink_msgs=3,
        uplink_bytes=3000,
        downlink_bytes=3000,
        adapter_bytes=1000,
        global_bytes=1000,
    )


def _propagation_s(down_bps: float, downlink_propagation: bool) -> float:
    rates = RatesInForce(uplink_bps=8e6, downlink_bps=down_bps, source="allocation")
    predicted = predict_client(
        _measured(),
        rates,
        emulate_compute=False,
        aggregation_s=0.0,
        propagation_delay_s=DELAY_S,
        downlink_propagation=downlink_propagation,
    )
    return predicted.propagation_s


@pytest.mark.parametrize(
    ("down_bps", "downlink_propagation", "messages"),
    [
        # token backend, downlink shaped: 3 uplinks, the adapter upload, 3 gradient
        # replies (the main server paces them) and the global adapter (the fed server).
        (8e6, True, 3 + 1 + 3 + 1),
        # token backend, downlink unshaped: the servers pace nothing.
        (math.inf, True, 3 + 1),
        # tc backend: the kernel shapes the downlink, nothing delays it in-process.
        (8e6, False, 3 + 1),
    ],
)
def test_propagation_is_charged_per_paced_message(
    down_bps: float, downlink_propagation: bool, messages: int
) -> None:
    assert _propagation_s(down_bps, downlink_propagation) == pytest.approx(DELAY_S * messages)


def test_an_unshaped_backend_charges_no_propagation() -> None:
    rates = RatesInForce(math.inf, math.inf, "unshaped_backend")
    predicted = predict_client(
        _measured(), rates, emulate_compute=False, aggregation_s=0.0, propagation_delay_s=DELAY_S
    )
    assert predicted.propagation_s == 0.0
