"""`python -m client`: one client process.

Starts from the fed server's address, its client id and a private work
directory (fedsllm.bootstrap): fetches the resolved scenario (and a
pretrained base) from the fed server, builds its data shard and the client
sub-network with LoRA, opens the Train stream to the main server, and runs
the rounds of client/loop.py (its Join carries the base hash). Its round,
adapter and optimizer state live in WORK_DIR/state (a ClientStore): a
restarted client resumes from them. Exits 0 when
the last round is done, 2 for a bad setting (naming it), non-zero with the
error otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

from fedsllm.roles import role_main

log = logging.getLogger("client")

STARTUP_TIMEOUT_S = 120.0
"""How long to wait for the fed server before the scenario is known."""
ALLOCATION_WAIT_S = 120.0
"""How long a round waits for its allocation from a reachable controller."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedsllm.roles import role_arg_parser

    parser = role_arg_parser("python -m client", __doc__)
    parser.add_argument(
        "--client-id", default=None, help="this client's id k (or FEDSLLM_CLIENT_ID)"
    )
    parser.add_argument(
        "--fed-address",
        default=None,
        help="fed server host:port (or FEDSLLM_FED_ADDRESS, or run.fed_address of a "
        "local --scenario)",
    )
    parser.add_argument(
        "--main-address",
        default=None,
        help="main server host:port (or FEDSLLM_MAIN_ADDRESS, else the scenario's "
        "run.main_address)",
    )
    parser.add_argument(
        "--control-address",
        default=None,
        help="control host:port: telemetry, run info, controller (or "
        "FEDSLLM_CONTROL_ADDRESS, else run.control_address, else the fed server's address)",
    )
    return parser.parse_args(argv)


@role_main(log)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(
        args.log_level, "client", args.client_id or os.environ.get("FEDSLLM_CLIENT_ID")
    )
    from fedsllm.bootstrap import (
        SettingError,
        parse_address,
        parse_client_id,
        resolve,
    )
    from fedsllm.errors import NO_VALUE
    from fedsllm.roles import (
        check_own_certificate,
        refused_credentials,
        resolve_role_paths,
        role_security,
        role_start,
        wait_for_fed_server,
    )
    from fedsllm.security.identity import Identity
    from fedsllm.telemetry.service import start_sender
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import make_channel

    try:
        client_id = resolve(
            "--client-id", args.client_id, "FEDSLLM_CLIENT_ID", parse=parse_client_id
        )
        if client_id.value is None:
            raise SettingError("--client-id", NO_VALUE, "required (or FEDSLLM_CLIENT_ID)")
        k = client_id.value
        args.client_id = k
        # This client's credentials (flags > FEDSLLM_* > none), passed to every channel.
        security = role_security(args)
        # Before any connection: a certificate of another client would be refused
        # (PERMISSION_DENIED) only at its first call as client k.
        given = (
            f"--client-id {k}" if client_id.source == "--client-id" else f"FEDSLLM_CLIENT_ID={k}"
        )
        check_own_certificate(security, Identity.client(k), given)
        fed_address, work_dir = resolve_role_paths(args, security)
        control = resolve(
            "--control-address", args.control_address, "FEDSLLM_CONTROL_ADDRESS",
            parse=parse_address,
        ).value  # fmt: skip
        # Run info comes over the control port when there is one (unshaped under tc).
        wait_for_fed_server(
            control or fed_address,
            security,
            STARTUP_TIMEOUT_S,
            "--control-address" if control else "--fed-address",
        )
        scenario, scenario_hash, info = role_start(args, control or fed_address, work_dir, security)
        control = resolve(
            "--control-address", control, "FEDSLLM_CONTROL_ADDRESS", "run.control_address",
            scenario.run.control_address, default=fed_address, parse=parse_address,
        ).value  # fmt: skip
        main_address = resolve(
            "--main-address", args.main_address, "FEDSLLM_MAIN_ADDRESS", "run.main_address",
            scenario.run.main_address, parse=parse_address,
        )  # fmt: skip
        if main_address.value is None:
            raise SettingError(
                "--main-address",
                NO_VALUE,
                "required (or FEDSLLM_MAIN_ADDRESS, or run.main_address)",
            )
        if not k < scenario.clients.num_clients:
            raise SettingError(
                client_id.source, k, f"is not in [0, {scenario.clients.num_clients})"
            )
    except SettingError as err:
        log.error("%s", err)
        return 2
    args.fed_address, args.control_address = fed_address, control
    args.main_address, args.work_dir = main_address.value, work_dir
    # Telemetry goes to the fed server's collector on the control port when there
    # is one: under tc it is an unshaped class, so records never queue behind
    # adapter uploads or take the link's measured rate.
    telemetry_channel = make_channel(control, security)
    telemetry = start_sender(telemetry_channel, work_dir, "client", k)
    tracer = Tracer(None, "client", client_id=k, sink=telemetry)
    try:
        # A server refusing this client's credentials (its first Join, Register or
        # Train stream, as another client's token) exits 2 naming the credential.
        with refused_credentials(security, "a server of this run"):
            return _run(args, scenario, scenario_hash, info, tracer, security)
    finally:
        # Bounded: a client whose fed server is gone still exits; what was not
        # acknowledged stays in WORK_DIR/spool for a restart of this client.
        telemetry.close(timeout_s=5.0)
        telemetry_channel.close()


def _run(
    args: argparse.Namespace,
    scenario: Any,
    scenario_hash: str,
    info: Any,
    tracer: Any,
    security: Any,
) -> int:
    import torch

    from client.loop import ClientTrainer, FixedPlan
    from client.remote import (
        AllocationFollower,
        FedServerClient,
        MainServerStream,
        trace_reconnects,
    )
    from fedsllm.data.federated import build_client_data
    from fedsllm.link.base import Direction
    from fedsllm.model.counts import count_scenario
    from fedsllm.model.lora import adapter_from_bytes, adapter_to_bytes, load_adapter
    from fedsllm.roles import (
        align_clock,
        build_role_part,
        build_role_shaper,
        compute_context,
        make_pacer,
        record_emulation,
        register_info,
        role_base_file,
    )
    from fedsllm.state import open_store
    from fedsllm.wire.rpc import RetryPolicy, make_channel

    k = args.client_id
    part, tokenizer, _, base_hash = build_role_part(
        scenario, "client", role_base_file(info, args.control_address, args.work_dir, security)
    )
    # Only this client's shard (and, for client 0, which evaluates, the validation set).
    shard, val = build_client_data(scenario, tokenizer, k, with_val=k == 0)
    optimizer = torch.optim.AdamW(
        [p for p in part.parameters() if p.requires_grad], lr=scenario.training.client_lr
    )
    chunk_bytes = scenario.link.chunk_bytes
    shaper = build_role_shaper(scenario, args.netns_run_id)
    pacer = make_pacer(scenario, scenario.profile(k).flops)
    counts = count_scenario(scenario)
    batch_size = scenario.training.batch_size

    def pace_up(nbytes: int, new_message: bool) -> None:
        shaper.pace(k, Direction.UP, nbytes, new_message=new_message)

    def downlink_bps() -> float:
        rate = shaper.rates(k)[1] if shaper is not None else math.inf
        return 0.0 if math.isinf(rate) else rate

    # One retry policy for every call: backoff seeded by the client id, so clients
    # spread their reconnects after a server restart; each retry is traced.
    retry = RetryPolicy(seed=k, on_retry=trace_reconnects(tracer))
    fed_channel = make_channel(args.fed_address, security)
    channels = [fed_channel]
    follower = None
    plan: Any = FixedPlan(scenario.training.num_local_steps)
    if scenario.policy.name != "fixed_steps":

        def apply(info: Any) -> None:
            if shaper is not None:
                shaper.set_rates(k, info.uplink_bps, info.downlink_bps or math.inf)

        control_channel = make_channel(args.control_address, security)
        channels.append(control_channel)
        follower = AllocationFollower(
            control_channel,
            register_info(scenario, k, len(shard)),
            apply,
            tracer,
            # An allocation may wait behind a controller restart: the reconnect too.
            wait_timeout_s=ALLOCATION_WAIT_S + retry.budget_s,
            retry=retry,
        )
        plan = follower

    def uplink_bps() -> float | None:
        """The emulated uplink in wall-clock bit/s (time dilation stretches every
        transfer); None when unshaped."""
        rate = shaper.rates(k)[0] if shaper is not None else math.inf
        return None if math.isinf(rate) else rate / scenario.link.time_dilation

    fed_link = FedServerClient(
        fed_channel,
        k,
        scenario_hash,
        chunk_bytes,
        pace_up=pace_up if shaper else None,
        uplink_bps=uplink_bps,
        base_hash=base_hash,
        retry=retry,
    )
    align_clock(tracer, fed_channel)
    main_link = MainServerStream(
        args.main_address,
        k,
        scenario_hash,
        scenario.split.wire_dtype,
        chunk_bytes,
        pace_up=pace_up if shaper else None,
        downlink_bps=downlink_bps,
        now=tracer.now,
        retry=retry,
        security=security,
    )
    trainer = ClientTrainer(
        client_id=k,
        part=part,
        optimizer=optimizer,
        batches=shard.batches(batch_size, seed=scenario.seed * 1000 + k),
        main=main_link,
        fed=fed_link,
        tracer=tracer,
        to_bytes=adapter_to_bytes,
        from_bytes=adapter_from_bytes,
        load_state=load_adapter,
        compute=compute_context(pacer),
        flops_forward=batch_size * counts.client_fwd_flops,
        flops_backward=batch_size * counts.client_bwd_flops,
        eval_every=scenario.training.eval_every,
        store=open_store("client", Path(args.work_dir) / "state", owner=True),
    )
    evaluate = None
    if k == 0:

        def evaluate(round_index: int) -> float:
            return trainer.evaluate(
                val,
                scenario.training.batch_size,
                scenario.training.num_val_batches,
                round_index,
            )

    log.info("client %d: %d training samples", k, len(shard))
    try:
        trainer.run(len(shard), plan, evaluate)
    finally:
        if follower is not None:
            follower.close()
        record_emulation(tracer, pacer, shaper)
        main_link.close()
        for channel in channels:
            channel.close()
        tracer.close()
    log.info("client %d done", k)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
