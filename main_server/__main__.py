"""`python -m main_server`: the main server process.

Builds the server sub-network with its LoRA from the resolved scenario,
serves MainServer (and the health service) until SIGTERM, then stops with a
grace period.
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

log = logging.getLogger("main_server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedsllm.roles import role_arg_parser

    parser = role_arg_parser("python -m main_server", __doc__)
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port to serve on")
    parser.add_argument(
        "--fed-address",
        default="",
        help="fed server host:port, to align this process's clock with the run's "
        "(default: none; fine when every role shares one host)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(args.log_level, "main_server")
    from fedsllm.model.counts import count_scenario
    from fedsllm.model.lora import adapter_to_bytes
    from fedsllm.proto import main_server_pb2_grpc
    from fedsllm.roles import (
        align_clock,
        build_part,
        build_role_shaper,
        compute_context,
        load_resolved_scenario,
        make_pacer,
        pace_downlink,
        record_emulation,
        wait_for_stop,
    )
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import create_server, make_channel, stop_server, wait_healthy
    from main_server.compute import ServerTrainer
    from main_server.service import MainServerService, StepLimits

    scenario, scenario_hash = load_resolved_scenario(args.scenario_json)
    run_dir = Path(args.run_dir)
    telemetry = telemetry_channel = None
    if args.fed_address:
        # Records stream to the fed server's collector (spooled under
        # RUN_DIR/spool while it is unreachable).
        from fedsllm.telemetry.service import start_sender

        telemetry_channel = make_channel(args.fed_address)
        telemetry = start_sender(telemetry_channel, run_dir, "main_server")
        tracer = Tracer(None, "main_server", sink=telemetry)
        # Started beside the fed server, which may still be coming up.
        wait_healthy(args.fed_address, scenario.run.startup_timeout_s)
        with make_channel(args.fed_address) as channel:
            align_clock(tracer, channel)
    else:
        # No fed server to collect them: the records stay in this run directory.
        tracer = Tracer(run_dir / "trace" / "main_server.jsonl", "main_server")
    part, tokenizer, model_config = build_part(scenario, "server")
    trainer = ServerTrainer(
        part,
        lr=scenario.training.server_lr,
        update=scenario.training.server_update,
        wave_size=scenario.clients.num_clients,
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
        adapter_bytes=lambda: trainer.adapter_bytes(adapter_to_bytes),
        compute=compute_context(pacer),
        flops_per_sample=counts.phi_s,
    )
    server, port = create_server(
        args.bind, [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(service, s)]
    )
    log.info("serving MainServer on port %d", port)

    wait_for_stop()
    stop_server(server, grace_s=2.0)
    # The run directory is shared (a host folder or a compose volume), so the
    # final server adapter is left there rather than fetched over the network.
    adapters = run_dir / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    tmp = adapters / "server.safetensors.tmp"
    tmp.write_bytes(trainer.adapter_bytes(adapter_to_bytes))
    tmp.replace(adapters / "server.safetensors")
    record_emulation(tracer, pacer, shaper)
    tracer.close()
    if telemetry is not None:
        # The fed server waits for this source's final push before it stops;
        # bounded well inside the launcher's grace period.
        telemetry.close(timeout_s=3.0)
        telemetry_channel.close()
    log.info("stopped after %d server updates", trainer.num_updates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
