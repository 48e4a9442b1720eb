"""`python -m client.host`: a fork server for client processes.

Importing torch, transformers and peft costs each client process seconds of
CPU and a few hundred MB that are the same in every client. This process
imports them once, then forks one child per client the launcher asks for:
the children share those pages copy-on-write, start in milliseconds, and are
still separate OS processes, each running `client.__main__.main` with its own
gRPC channels, paced link, data shard and LoRA state (nothing is shared
after the fork but read-only library pages).

Protocol, one JSON object per line. On stdin (from the launcher):
``{"op": "start", "name": "client_3", "argv": [...], "env": {...}, "log": "..."}``
(`env`: the client's own variables, set over the host's),
and ``{"op": "signal", "name": "client_3", "signum": 15}``. On stdout:
``{"event": "ready"}`` once preloaded, ``{"event": "started", "name", "pid",
"seq"}`` and ``{"event": "exited", "name", "pid", "seq", "code"}`` (code as
subprocess gives it: negative for a signal; seq numbers the host's forks
from 1, so a pid the kernel hands out again never makes one child's exit
another's). The host is the children's parent and reaps them
itself, so a signal it forwards can only reach its own live child, never a
reused pid. Children stay in the host's process group: the launcher's
SIGTERM/SIGKILL to the group reaches every client. On SIGTERM, or when stdin
closes (the launcher is gone), the host stops its children (SIGTERM, then
SIGCONT for one that was stopped) and exits once all are reaped. A host that
cannot (killed by SIGKILL, or crashed) still takes them down: each child asks
the kernel for SIGTERM, its clean stop, when the host dies
(fedsllm.launch.die_with_parent). The host forks from its only thread, before
any gRPC channel or torch thread pool exists.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import time
from typing import Any

from fedsllm.launch import die_with_parent

PRELOAD = (
    "torch",
    "numpy",
    "grpc",
    "safetensors.torch",
    "transformers",
    "transformers.loss.loss_utils",
    "transformers.models.llama.modeling_llama",
    "transformers.models.gpt2.modeling_gpt2",
    "peft",
    "client.loop",
    "client.remote",
    "client.__main__",
    "fedsllm.bootstrap",
    "fedsllm.cli",
    "fedsllm.roles",
    "fedsllm.data.federated",
    "fedsllm.data.tokenizer",
    "fedsllm.model.build",
    "fedsllm.model.split",
    "fedsllm.model.lora",
    "fedsllm.model.counts",
    "fedsllm.telemetry.service",
    "fedsllm.trace",
    "fedsllm.wire.rpc",
    "fedsllm.wire.train",
    "fedsllm.wire.adapters",
    "fedsllm.link",
    "fedsllm.link.base",
    "fedsllm.device",
    "fedsllm.link.channel",
    "fedsllm.wire.messages",
    "fedsllm.wire.probe",
    "fedsllm.proto.controller_pb2_grpc",
    "fedsllm.proto.fed_server_pb2_grpc",
    "fedsllm.proto.main_server_pb2_grpc",
    "fedsllm.proto.telemetry_pb2_grpc",
    "fedsllm.security.identity",
    "fedsllm.security.credentials",
    "grpc_health.v1.health_pb2_grpc",
)
"""What every client imports; a module that is missing is skipped (the client
imports what it needs itself, at its own cost)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def preload(names: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import `names`; returns those that could not be imported."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def warm_up() -> None:
    """Build (and drop) a default client part once, so the caches every client
    fills the same way (peft's and transformers' compiled regexes, lazy
    submodules) are filled here, once, and shared. Single-threaded: torch runs
    with the launcher's OMP_NUM_THREADS (1 for clients) and starts no pool."""
    from fedsllm.config import load_scenario
    from fedsllm.roles import build_part

    try:
        part, _, _ = build_part(load_scenario(None, ["model.pretrain_steps=0"]), "client")
    except Exception:  # noqa: BLE001 - a warm-up that fails only costs the clients time
        return
    del part


def _send(out: Any, **event: Any) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def _child(argv: list[str], env: dict[str, str], log_path: str, keep_fds: tuple[int, ...]) -> None:
    """In the forked child: own stdio, default signals, then the client. Never returns."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # The host's pipes are usually fds 0 and 1, replaced above; others are closed.
        for fd in {log_fd, null_fd, *keep_fds} - {0, 1, 2}:
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0 lives as long as the child
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["python -m client", *argv]
        os.environ.update(env)
        gc.enable()
        from client.__main__ import main

        code = main(argv)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:  # the client's own traceback, in its own log
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def serve(stdin_fd: int = 0, out: Any = None) -> int:
    out = out or sys.stdout
    host_pid = os.getpid()
    stopping = False

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    missing = preload()
    warm_up()
    # Objects that exist now are never collected in a child: freezing keeps
    # the collector from touching (and so copying) their pages.
    gc.collect()
    gc.freeze()
    _send(out, event="ready", missing=missing)
    children: dict[int, tuple[str, int]] = {}  # pid -> (name, fork seq), until reaped
    num_forks = 0
    buffer = b""
    stdin_open = True
    stop_sent = False
    while True:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = children.pop(pid, None)
            if child is not None:
                name, seq = child
                _send(out, event="exited", name=name, pid=pid, seq=seq, code=_code(status))
        if stopping or not stdin_open:
            if not stop_sent:
                for pid in children:
                    _kill(pid, signal.SIGTERM)
                    # A stopped child (SIGSTOP, a fault injected) acts on its
                    # SIGTERM only once continued; the host waits for it otherwise.
                    _kill(pid, signal.SIGCONT)
                stop_sent = True
            if not children:
                return 0
            time.sleep(0.05)
            continue
        ready, _, _ = select.select([stdin_fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            stdin_open = False
            continue
        buffer += chunk
        # Every child forked from this chunk waits at a gate until the last one is
        # forked: a fork copies the host's page tables, and a host that competes
        # for the CPU with clients already computing forked 3 a second.
        gate_r, gate_w = os.pipe()
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            request = json.loads(line)
            if request["op"] == "start":
                out.flush()
                # A SIGTERM that reaches the child before it resets its handlers
                # would run the host's handler (a flag in the child's copy) and be
                # lost: blocked across the fork, it waits for the child's defaults.
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                pid = os.fork()
                if pid == 0:
                    # Set while SIGTERM is still blocked: one that comes at once
                    # waits for the defaults below, and then stops the child.
                    if not die_with_parent(signal.SIGTERM, host_pid):
                        os._exit(128 + signal.SIGTERM)  # the host died before it was set
                    for signum in STOP_SIGNALS:
                        signal.signal(signum, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    os.close(gate_w)
                    os.read(gate_r, 1)  # b"" once the host closes its end
                    _child(
                        list(request["argv"]),
                        dict(request.get("env") or {}),
                        request["log"],
                        (stdin_fd, out.fileno(), gate_r),
                    )
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                num_forks += 1
                children[pid] = (request["name"], num_forks)
                _send(out, event="started", name=request["name"], pid=pid, seq=num_forks)
            elif request["op"] == "signal":
                for pid, (name, _seq) in children.items():
                    if name == request["name"]:
                        _kill(pid, int(request["signum"]))
        os.close(gate_w)
        os.close(gate_r)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    raise SystemExit(serve())
