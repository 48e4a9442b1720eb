"""Start-up helpers shared by the three role processes (no role logic here)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from fedsllm.config import ScenarioConfig, from_dict


def role_arg_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every role takes; each role's parse_args adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--scenario-json",
        "--scenario",
        dest="scenario_json",
        required=True,
        help="resolved scenario.json written by the launcher, or a scenario TOML file",
    )
    parser.add_argument("--run-dir", required=True, help="run directory (traces, adapters)")
    parser.add_argument(
        "--netns-run-id",
        default="",
        help="run id of the launcher's network namespaces (tc backend)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def load_resolved_scenario(path: str | Path) -> tuple[ScenarioConfig, str]:
    """Read the launcher's scenario.json, or a scenario TOML file (as docker
    compose passes it); returns the scenario and its hash, which peers compare."""
    path = Path(path)
    if path.suffix == ".toml":
        from fedsllm.config import load_scenario
        from fedsllm.launch import scenario_hash

        scenario = load_scenario(path)
        return scenario, scenario_hash(scenario)
    doc = json.loads(path.read_text())
    scenario_hash_text = doc.pop("scenario_hash", "")
    return from_dict(doc), scenario_hash_text


def build_part(scenario: ScenarioConfig, side: str) -> tuple[Any, Any, Any]:
    """Build the base model, split it, and put LoRA on `side` ("client" or "server").

    Returns (peft-wrapped part, tokenizer, model config). Every process calls
    this with the same scenario and gets identical frozen weights and an
    identical initial adapter (seeded), so nothing but adapters and
    activations ever needs to cross the wire.
    """
    import torch

    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import build_base_model, model_family
    from fedsllm.model.lora import apply_lora
    from fedsllm.model.split import split_model

    torch.set_num_threads(
        scenario.run.server_threads if side == "server" else scenario.run.num_threads
    )
    tokenizer = load_tokenizer(scenario)
    base = build_base_model(scenario, tokenizer.vocab_size)
    family = model_family(base)
    client_part, server_part = split_model(base, scenario.split.split_layer)
    part = client_part if side == "client" else server_part
    peft_part = apply_lora(part, scenario.adapter, family, seed=scenario.seed)
    return peft_part, tokenizer, base.config


def build_role_shaper(scenario: ScenarioConfig, netns_run_id: str = "") -> Any:
    """The link shaper of this process (None when links are not emulated)."""
    from fedsllm.link import build_shaper

    topology = None
    if scenario.link.backend == "tc":
        from fedsllm.link.netns import NetnsTopology

        topology = NetnsTopology(netns_run_id, scenario.clients.num_clients)
    return build_shaper(scenario.link, topology=topology)


def make_pacer(scenario: ScenarioConfig, flops_per_s: float) -> Any:
    """Device-compute emulation for this process (None when it is off)."""
    if not scenario.link.emulate_compute:
        return None
    from fedsllm.device import DevicePacer

    return DevicePacer(flops_per_s, scenario.link.time_dilation)


def compute_context(pacer: Any) -> Callable[[float, str], AbstractContextManager[Any]]:
    """`compute(flops, label)` for the training loops: paced when emulated."""
    if pacer is None:
        return lambda _flops, _label: nullcontext(None)
    return lambda flops, label: pacer.step(flops, label)


def register_info(scenario: ScenarioConfig, client_id: int, num_samples: int) -> Any:
    """What a client tells the controller about itself: its profile as the scenario
    places it (distance and gain from the seeded channel model)."""
    import math

    from fedsllm.link.channel import client_distances
    from fedsllm.wire.messages import RegisterInfo

    profile = scenario.profile(client_id)
    distance = float(client_distances(scenario)[client_id])
    # gain 0 dB means "from placement": a fixed gain would freeze per-round fading.
    gain_db = 0.0 if math.isnan(profile.gain_db) else profile.gain_db
    return RegisterInfo(
        client_id=client_id,
        num_samples=num_samples,
        flops=profile.flops,
        tx_power_dbm=profile.tx_power_dbm,
        distance_m=distance,
        gain_db=gain_db,
    )


def pace_downlink(
    shaper: Any, client_id: int, rate_bps: float, nbytes: int, new_message: bool
) -> None:
    """Hold one downlink message to client `client_id` until a link of `rate_bps`
    (0 = unlimited) has carried it; the servers learn the rate per message."""
    import math

    from fedsllm.link.base import Direction

    if rate_bps <= 0:
        return
    if shaper.rates(client_id)[1] != rate_bps:
        shaper.set_rates(client_id, math.inf, rate_bps)
    shaper.pace(client_id, Direction.DOWN, nbytes, new_message=new_message)


def align_clock(tracer: Any, fed_channel: Any, timeout_s: float = 10.0) -> None:
    """Estimate this process's offset to the fed server's clock (fedsllm.clock) and
    put it on the tracer, so every process's records share one time axis."""
    from fedsllm.clock import measure_offset
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc
    from fedsllm.wire.rpc import unary_call

    stub = fed_server_pb2_grpc.FedServerStub(fed_channel)
    request = fed_server_pb2.StatusRequest()
    clock = measure_offset(
        lambda: unary_call(stub.Status, request, timeout_s=timeout_s, attempts=5).server_unix_s
    )
    tracer.clock_offset_s = clock.offset_s
    tracer.event("clock_offset", offset_s=clock.offset_s, rtt_s=clock.rtt_s)


def record_emulation(tracer: Any, pacer: Any, shaper: Any) -> None:
    """Trace what device and link emulation did in this process, for reports."""
    import dataclasses

    if pacer is not None:
        tracer.event("device_summary", **dataclasses.asdict(pacer.summary()))
    if shaper is not None:
        for (client_id, direction), stats in shaper.stats().items():
            tracer.event(
                "link_stats",
                client=client_id,
                direction=direction.name.lower(),
                **dataclasses.asdict(stats),
            )


def wait_for_stop(every_s: float = 0.5, tick: Callable[[], object] | None = None) -> None:
    """Block until SIGTERM or SIGINT (how the launcher, compose and Ctrl-C stop a
    server), calling `tick` every `every_s` seconds meanwhile."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(every_s):
        if tick is not None:
            tick()
