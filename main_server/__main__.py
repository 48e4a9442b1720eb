"""`python -m main_server`: the main server process.

Starts from the fed server's address and a private work directory
(fedsllm.bootstrap): fetches the resolved scenario (and a pretrained base)
from the fed server, builds the server sub-network with its LoRA, joins with
the scenario and base hashes, serves MainServer (and the health service)
until SIGTERM, then stops with a grace period. Its adapter goes to the fed
server after each completed round and at the end; it writes nothing outside
its work directory.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("main_server")

STARTUP_TIMEOUT_S = 120.0
"""How long to wait for the fed server before the scenario is known."""


def join_main_server(channel: Any, scenario_hash: str, base_hash: str) -> int:
    """JoinMainServer; SettingError naming the hash the fed server refused."""
    import grpc

    from fedsllm.bootstrap import SettingError
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc
    from fedsllm.wire.rpc import unary_call

    stub = fed_server_pb2_grpc.FedServerStub(channel)
    request = fed_server_pb2.MainServerJoinRequest(scenario_hash=scenario_hash, base_hash=base_hash)
    try:
        return unary_call(stub.JoinMainServer, request, timeout_s=30.0).num_rounds
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
            field = "base_hash" if "base_hash" in (err.details() or "") else "scenario_hash"
            raise SettingError(field, base_hash if field == "base_hash" else scenario_hash,
                               f"refused at Join: {err.details()}") from None  # fmt: skip
        raise


class AdapterCheckpoints:
    """Sends the server adapter to the fed server after each round it completes
    (polled on its Status) and at the end; failures are logged, not raised."""

    def __init__(
        self, channel: Any, adapter: Callable[[], bytes], chunk_bytes: int, every_s: float = 1.0
    ) -> None:
        from fedsllm.proto import fed_server_pb2_grpc

        self.stub = fed_server_pb2_grpc.FedServerStub(channel)
        self.adapter = adapter
        self.chunk_bytes = chunk_bytes
        self.every_s = every_s
        self.completed = -1
        self._last_poll = 0.0

    def tick(self, force: bool = False) -> None:
        import time

        import grpc

        from fedsllm.proto import fed_server_pb2

        now = time.monotonic()
        if now - self._last_poll < self.every_s and not force:
            return
        self._last_poll = now
        try:
            status = self.stub.Status(fed_server_pb2.StatusRequest(), timeout=5.0)
        except grpc.RpcError:
            return
        completed = status.round - 1 if not status.finished else status.num_rounds - 1
        if completed > self.completed:
            self.completed = completed
            self.push(final=False)

    def push(self, final: bool) -> bool:
        import grpc

        from fedsllm.bootstrap import server_adapter_requests

        blob = self.adapter()
        try:
            self.stub.PushServerAdapter(
                server_adapter_requests(self.completed, final, blob, self.chunk_bytes),
                timeout=10.0,
            )
        except grpc.RpcError as err:
            log.warning("server adapter not sent to the fed server: %s", err.details())
            return False
        log.info(
            "server adapter sent (%s, %d bytes)",
            "final" if final else f"after round {self.completed}",
            len(blob),
        )
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedsllm.roles import role_arg_parser

    parser = role_arg_parser("python -m main_server", __doc__)
    parser.add_argument(
        "--bind",
        default=None,
        help="host:port to serve on (or FEDSLLM_MAIN_BIND, else the scenario's "
        "run.main_address, else 127.0.0.1:0)",
    )
    parser.add_argument(
        "--fed-address",
        default=None,
        help="fed server host:port (or FEDSLLM_FED_ADDRESS, or run.fed_address of a "
        "local --scenario): the scenario, the base, telemetry and the clock come from it",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(args.log_level, "main_server")
    from fedsllm.bootstrap import SettingError, parse_bind, resolve
    from fedsllm.model.counts import count_scenario
    from fedsllm.model.lora import adapter_to_bytes
    from fedsllm.proto import main_server_pb2_grpc
    from fedsllm.roles import (
        align_clock,
        build_role_part,
        build_role_shaper,
        compute_context,
        make_pacer,
        pace_downlink,
        record_emulation,
        resolve_role_paths,
        role_base_file,
        role_security,
        role_start,
        wait_for_stop,
    )
    from fedsllm.telemetry.service import start_sender
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import create_server, make_channel, stop_server, wait_healthy
    from main_server.compute import LocalWorker, ServerTrainer, StepQueue
    from main_server.service import MainServerService, StepLimits

    try:
        security = role_security(args)
        fed_address, work_dir = resolve_role_paths(args, security)
        # Started beside the fed server, which may still be coming up.
        wait_healthy(fed_address, STARTUP_TIMEOUT_S, security=security)
        scenario, scenario_hash, info = role_start(args, fed_address, work_dir, security)
        bind = resolve(
            "--bind", args.bind, "FEDSLLM_MAIN_BIND", "run.main_address",
            scenario.run.main_address, default="127.0.0.1:0", parse=parse_bind,
        ).value  # fmt: skip
    except SettingError as err:
        log.error("%s", err)
        return 2
    from fedsllm.errors import ConfigError

    try:
        warning = security.check_bind(bind)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    if warning is not None:
        log.warning("%s", warning)
    log.info("channels: %s", security.describe())
    # Records stream to the fed server's collector (spooled under
    # WORK_DIR/spool while it is unreachable).
    telemetry_channel = make_channel(fed_address, security)
    telemetry = start_sender(telemetry_channel, work_dir, "main_server")
    tracer = Tracer(None, "main_server", sink=telemetry)
    fed_channel = make_channel(fed_address, security)
    align_clock(tracer, fed_channel)
    part, tokenizer, model_config, base_hash = build_role_part(
        scenario, "server", role_base_file(info, fed_address, work_dir, security)
    )
    try:
        join_main_server(fed_channel, scenario_hash, base_hash)
    except SettingError as err:
        log.error("%s", err)
        tracer.close()
        telemetry.close(timeout_s=3.0)
        telemetry_channel.close()
        fed_channel.close()
        return 2
    trainer = ServerTrainer(
        part,
        lr=scenario.training.server_lr,
        update=scenario.training.server_update,
        wave_size=scenario.clients.num_clients,
        max_fused=scenario.training.max_wave_batches,
    )
    limits = StepLimits(
        hidden_size=model_config.hidden_size,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=scenario.data.seq_len,
        max_batch=max(scenario.training.batch_size, 64),
        wire_dtype=scenario.split.wire_dtype,
        num_clients=scenario.clients.num_clients,
        max_tensor_bytes=256 * 2**20,
    )
    shaper = build_role_shaper(scenario, args.netns_run_id)
    pacer = make_pacer(scenario, scenario.devices.server_flops)
    counts = count_scenario(scenario)
    # Handlers receive; one worker computes (main_server/compute.py).
    steps = StepQueue(LocalWorker(trainer))

    def adapter() -> bytes:
        return steps.call(lambda t: t.adapter_bytes(adapter_to_bytes))

    service = MainServerService(
        trainer,
        limits,
        scenario_hash,
        tracer,
        chunk_bytes=scenario.link.chunk_bytes,
        pace=(
            functools.partial(pace_downlink, shaper)
            if shaper is not None and scenario.link.backend == "token"
            else None
        ),
        adapter_bytes=adapter,
        compute=compute_context(pacer),
        flops_per_sample=counts.phi_s,
        steps=steps,
    )
    server, port = create_server(
        bind,
        [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(service, s)],
        security=security,
    )
    log.info("serving MainServer on port %d", port)

    checkpoints = AdapterCheckpoints(fed_channel, adapter, scenario.link.chunk_bytes)
    wait_for_stop(tick=checkpoints.tick)
    stop_server(server, grace_s=2.0)
    # The fed server keeps the server adapter in its run directory: this
    # role writes nothing outside its own work directory.
    checkpoints.tick(force=True)  # a last round that ended since the last poll
    checkpoints.push(final=True)
    steps.close()
    record_emulation(tracer, pacer, shaper)
    tracer.close()
    # The fed server waits for this source's final push before it stops;
    # bounded well inside the launcher's grace period.
    telemetry.close(timeout_s=3.0)
    telemetry_channel.close()
    fed_channel.close()
    log.info(
        "stopped after %d server updates: %d steps in %d worker passes, %.1f s busy "
        "(%.1f steps/s), deepest queue %d",
        trainer.num_updates, steps.num_steps, steps.num_passes, steps.busy_s,
        steps.num_steps / steps.busy_s if steps.busy_s > 0 else 0.0, steps.max_depth,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
