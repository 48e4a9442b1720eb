"""A main server for the SIGTERM test (tests/main_server/test_stop.py): the
real MainServerService, StepQueue, downlink pacing (fedsllm.roles) and
main_server.__main__.serve_until_stopped, without a fed server.

Usage: python tests/main_server/sigterm_harness.py STATE_DIR MODE
MODE "pace": downlinks are paced by the token shaper build_role_shaper makes.
MODE "step": the step worker never finishes a step (a handler waits on it).
Prints "port N" once serving and "worker entered" when a step reaches the worker.
"""

from __future__ import annotations

import functools
import sys
import threading

from fedsllm.config import load_scenario
from fedsllm.proto import main_server_pb2_grpc as pb_grpc
from fedsllm.roles import build_part, build_role_shaper, install_stop_signals, pace_downlink
from fedsllm.state import open_store
from fedsllm.trace import Tracer
from fedsllm.wire.rpc import create_server
from main_server.__main__ import LocalCheckpoints, serve_until_stopped
from main_server.compute import LocalWorker, ServerStepResult, ServerTrainer, StepJob, StepQueue
from main_server.service import MainServerService
from main_server.step_checks import StepLimits

HASH = "sigterm-test"


class HeldWorker(LocalWorker):
    """A worker whose step never ends: the handler waiting on it must not hold the stop."""

    def run(self, jobs: list[StepJob]) -> list[ServerStepResult]:
        print("worker entered", flush=True)
        threading.Event().wait()
        raise AssertionError("unreachable")


def main() -> None:
    state_dir, mode = sys.argv[1], sys.argv[2]
    stop = install_stop_signals()
    scenario = load_scenario(
        overrides=[
            "model.pretrain_steps=0",
            "data.seq_len=16",
            "clients.num_clients=2",
            'link.backend="token"',
        ]
    )
    part, tokenizer, cfg = build_part(scenario, "server")
    trainer = ServerTrainer(part, lr=1e-2)
    steps = StepQueue((HeldWorker if mode == "step" else LocalWorker)(trainer))
    limits = StepLimits(
        hidden_size=cfg.hidden_size,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=16,
        max_batch=8,
        wire_dtype="float32",
        num_clients=2,
        max_tensor_bytes=2**20,
    )
    shaper = build_role_shaper(scenario)
    service = MainServerService(
        trainer,
        limits,
        HASH,
        Tracer(None, "main_server"),
        chunk_bytes=1024,
        pace=functools.partial(pace_downlink, shaper),
        steps=steps,
        stop=stop,
    )
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: pb_grpc.add_MainServerServicer_to_server(service, s)],
        allow_unauthenticated=True,
    )
    local = LocalCheckpoints(open_store("main_server", state_dir), steps, HASH)  # type: ignore[arg-type]
    print(f"port {port}", flush=True)
    serve_until_stopped(server, steps, None, local)
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
