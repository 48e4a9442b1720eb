"""`python -m main_server`: the main server process.

Starts from the fed server's address and a private work directory
(fedsllm.bootstrap): fetches the resolved scenario (and a pretrained base)
from the fed server, builds the server sub-network with its LoRA, joins with
the scenario and base hashes, serves MainServer (and the health service)
until SIGTERM, then stops with a grace period. Its adapter goes to the fed
server after each completed round and at the end; it writes nothing outside
its work directory.

State (issue 10): the trainer's whole state (adapter, optimizer, counters, an
open wave's gradients, and per client the latest train step applied with its
reply) is checkpointed to a MainServerStore in WORK_DIR/state before the first
step of each new round, after each
completed round, every CHECKPOINT_EVERY_S seconds while steps happen, and at
a clean exit; a restarted main server restores the latest one before it
serves, so clients reconnect to where it was. Steps computed after the last
checkpoint are lost with a kill -9.

A client re-sends the step whose reply did not reach it (its stream broke,
this server restarted), and that step may have been applied already. Each
train step is applied at most once per (client, round, step): the worker
answers a re-send of a client's latest applied step from its saved reply
without computing it again (main_server.compute.admit_step), also after a
restart when the checkpoint holds that step; a step the checkpoint does not
hold was lost with the crash, and is computed (applied once). A fed server
that is gone for a while is waited for: Join and adapter pushes retry with
backoff.
"""

from __future__ import annotations

import argparse
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fedsllm.roles import role_main

if TYPE_CHECKING:
    from fedsllm.state import MainServerSnapshot, MainServerStore
    from main_server.compute import StepQueue

log = logging.getLogger("main_server")

STARTUP_TIMEOUT_S = 120.0
"""How long to wait for the fed server before the scenario is known."""

CHECKPOINT_EVERY_S = 10.0
"""Seconds between two periodic checkpoints while steps happen (one is also
written at each completed round and at a clean exit)."""

RETRY_BASE_S = 0.5
RETRY_CAP_S = 10.0
"""Backoff (fedsllm.wire.retry.backoff_delays) of the calls to the fed server
that are retried while it is unreachable: JoinMainServer and adapter pushes."""

FINAL_WAIT_S = 5.0
"""At a clean exit, how long the last checkpoint and the final adapter push
may take each: the launcher's grace period is 10 s."""

RETRIED_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
"""A fed server that is restarting: retry. Anything else is an answer."""


def join_main_server(
    channel: Any,
    scenario_hash: str,
    base_hash: str,
    stop: threading.Event | None = None,
    *,
    security: Any = None,
    peer: str = "the fed server",
) -> int:
    """JoinMainServer; SettingError naming the hash the fed server refused, or
    the credential (of `security`) it refused (fedsllm.roles.credential_error).

    While the fed server is unreachable (UNAVAILABLE: restarting) the join is
    retried with backoff until it answers or `stop` is set (RoleStopping)."""
    import grpc

    from fedsllm.bootstrap import SettingError
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc
    from fedsllm.roles import RoleStopping, credential_error
    from fedsllm.wire.rpc import RetryPolicy

    stub = fed_server_pb2_grpc.FedServerStub(channel)
    request = fed_server_pb2.MainServerJoinRequest(scenario_hash=scenario_hash, base_hash=base_hash)
    stop = threading.Event() if stop is None else stop

    def wait_or_stop(seconds: float) -> None:
        if stop.wait(seconds):
            raise RoleStopping("stopping before the fed server answered Join")

    retry = RetryPolicy(
        seed=None, budget_s=None, base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S, sleep=wait_or_stop
    )
    try:
        return retry.call(
            "JoinMainServer",
            lambda: stub.JoinMainServer(request, timeout=30.0).num_rounds,
            retry_on=tuple(getattr(grpc.StatusCode, name) for name in RETRIED_CODES),
        )
    except grpc.RpcError as err:
        refused = credential_error(err, security, peer)
        if refused is not None:
            raise refused from None
        if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        field = "base_hash" if "base_hash" in (err.details() or "") else "scenario_hash"
        raise SettingError(field, base_hash if field == "base_hash" else scenario_hash,
                           f"refused at Join: {err.details()}") from None  # fmt: skip


class AdapterCheckpoints:
    """Sends the server adapter to the fed server after each round it completes
    (polled on its Status) and at the end. `adapter(timeout_s)` serializes it
    (on the step worker; TimeoutError when busy past timeout_s, None: wait).

    A push the fed server cannot take now (UNAVAILABLE: it is restarting) is
    retried with backoff from later ticks, so the tick loop never blocks on
    it; a refusal as "not joined" joins again first (`rejoin`). Other
    failures are logged, not raised. `on_round` runs after each completed
    round is seen (the local checkpoint)."""

    def __init__(
        self,
        channel: Any,
        adapter: Callable[[float | None], bytes],
        chunk_bytes: int,
        every_s: float = 1.0,
        *,
        on_round: Callable[[], object] | None = None,
        rejoin: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from fedsllm.proto import fed_server_pb2_grpc

        self.stub = fed_server_pb2_grpc.FedServerStub(channel)
        self.adapter = adapter
        self.chunk_bytes = chunk_bytes
        self.every_s = every_s
        self.on_round = on_round
        self.rejoin = rejoin
        self.clock = clock
        self.completed = -1
        """Latest completed round seen; restored from the local checkpoint."""
        self.pushed = -1
        """Latest completed round whose adapter the fed server took."""
        self.timeout_s: float | None = None
        """Bound on each push while stopping (None while serving)."""
        self._last_poll = -float("inf")
        self._retry_at = 0.0
        self._delays: Iterator[float] | None = None

    def tick(self, force: bool = False) -> None:
        import grpc

        from fedsllm.proto import fed_server_pb2

        now = self.clock()
        if now - self._last_poll >= self.every_s or force:
            self._last_poll = now
            try:
                status = self.stub.Status(fed_server_pb2.StatusRequest(), timeout=5.0)
            except grpc.RpcError:
                status = None  # unreachable now: polled again next tick
            if status is not None:
                completed = status.round - 1 if not status.finished else status.num_rounds - 1
                if completed > self.completed:
                    self.completed = completed
                    self._delays = None
                    self._retry_at = now
                    self._push_pending()
                    if self.on_round is not None:
                        self.on_round()
                    return
        if self.pushed < self.completed and now >= self._retry_at:
            self._push_pending()

    def _push_pending(self) -> None:
        from fedsllm.wire.retry import backoff_delays

        if self.push(final=False, timeout_s=self.timeout_s):
            self.pushed = self.completed
            self._delays = None
            return
        if self._delays is None:
            self._delays = backoff_delays(RETRY_BASE_S, RETRY_CAP_S, seed=None)
        self._retry_at = self.clock() + next(self._delays)

    def push(self, final: bool, timeout_s: float | None = None) -> bool:
        """One push of the current adapter; True once the fed server took it."""
        import grpc

        from fedsllm.bootstrap import server_adapter_requests
        from fedsllm.wire.status import refusal_of

        try:
            blob = self.adapter(timeout_s)
        except TimeoutError:
            log.warning("server adapter not sent: the step worker stayed busy")
            return False
        for again in (False, True):
            try:
                self.stub.PushServerAdapter(
                    server_adapter_requests(self.completed, final, blob, self.chunk_bytes),
                    timeout=10.0 if timeout_s is None else timeout_s,
                )
            except grpc.RpcError as err:
                if not again and self.rejoin is not None and refusal_of(err) == "not_joined":
                    log.info("the fed server does not know this main server: joining again")
                    self.rejoin()
                    continue
                retried = err.code().name in RETRIED_CODES and not final
                log.warning("server adapter not sent to the fed server%s: %s",
                            " (will retry)" if retried else "", err.details())  # fmt: skip
                return False
            break
        log.info(
            "server adapter sent (%s, %d bytes)",
            "final" if final else f"after round {self.completed}",
            len(blob),
        )
        return True


class LocalCheckpoints:
    """The main server's own state in its MainServerStore (WORK_DIR/state).

    Written, each time atomically (the store's commit document is written
    last): after each completed round (AdapterCheckpoints.on_round), every
    `every_s` seconds while steps happen (`tick`), and at a clean exit. The
    export runs on the step worker (StepQueue.call), between passes, so a
    checkpoint never holds half an update."""

    def __init__(
        self,
        store: MainServerStore,
        steps: StepQueue,
        scenario_hash: str,
        *,
        pushed_round: Callable[[], int] = lambda: -1,
        every_s: float = CHECKPOINT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.steps = steps
        self.scenario_hash = scenario_hash
        self.pushed_round = pushed_round
        self.every_s = every_s
        self.clock = clock
        self._last_s = clock()
        self._steps_at_save = 0

    def restore(self) -> MainServerSnapshot | None:
        """Load the latest checkpoint into the trainer (None: there is none).
        StateError when it belongs to another scenario or does not fit."""
        from fedsllm.errors import StateError
        from main_server.compute import TrainerState

        snap = self.store.load()
        if snap is None:
            return None
        saved_hash = snap.extra.get("scenario_hash")
        if saved_hash != self.scenario_hash:
            raise StateError(
                f"{self.store.backend.location}: checkpoint of scenario {saved_hash!r}, "
                f"this run's is {self.scenario_hash!r}; move the state directory away "
                "to start fresh"
            )
        if snap.optimizer is None:
            raise StateError(f"{self.store.backend.location}: checkpoint without optimizer state")
        e = snap.extra
        state = TrainerState(
            adapter=snap.adapter,
            optimizer=snap.optimizer,
            wave=snap.wave,
            num_steps=snap.num_steps,
            num_updates=snap.num_updates,
            num_partial_waves=int(e["num_partial_waves"]),
            last_round=snap.round,
            batches_in_wave=int(e["batches_in_wave"]),
            wave_round=int(e["wave_round"]),
            update=str(e["update"]),
            wave_size=int(e["wave_size"]),
            applied=snap.applied,
            replies=snap.replies,
        )
        self.steps.call(lambda t: t.restore_state(state))
        self._steps_at_save = self.steps.num_steps
        log.info(
            "resumed from checkpoint %d: %d updates, %d steps, the latest of %d clients",
            snap.seq, snap.num_updates, snap.num_steps, len(snap.applied),
        )  # fmt: skip
        return snap

    def save(self, reason: str, timeout_s: float | None = None) -> int:
        """Export the trainer (on the worker) and commit it; returns the commit number."""
        steps_now = self.steps.num_steps
        state = self.steps.call(lambda t: t.export_state(), timeout_s)
        return self._commit(state, reason, steps_now)

    def save_on_worker(self, trainer: Any, reason: str = "round started") -> int:
        """The same from the worker thread itself (StepQueue.on_new_round)."""
        return self._commit(trainer.export_state(), reason, self.steps.num_steps)

    def _commit(self, state: Any, reason: str, steps_now: int) -> int:
        seq = self.store.save(
            state.adapter,
            state.optimizer,
            num_steps=state.num_steps,
            num_updates=state.num_updates,
            round_index=state.last_round,
            extra={
                "scenario_hash": self.scenario_hash,
                "pushed_round": self.pushed_round(),
                **state.counters(),
            },
            wave=state.wave,
            applied=state.applied,
            replies=state.replies,
        )
        self._last_s = self.clock()
        self._steps_at_save = steps_now
        log.info("checkpoint %d (%s): %d updates, %d steps",
                 seq, reason, state.num_updates, state.num_steps)  # fmt: skip
        return seq

    def tick(self) -> None:
        """The periodic checkpoint: every `every_s` seconds, if steps happened since."""
        if self.clock() - self._last_s < self.every_s:
            return
        if self.steps.num_steps == self._steps_at_save:
            self._last_s = self.clock()
            return
        self.save("periodic")


def serve_until_stopped(
    server: Any,
    steps: StepQueue,
    adapters: AdapterCheckpoints | None,
    local: LocalCheckpoints | None,
    grace_s: float = 2.0,
) -> None:
    """Serve until SIGTERM or SIGINT, checkpointing meanwhile; then stop in order.

    Every step of the stop is bounded: queued steps are refused (their
    handlers answer UNAVAILABLE; pacing sleeps and step waits already ended
    on the stop flag), running calls get `grace_s`, then the last round's
    adapter, the last checkpoint and the final push each get FINAL_WAIT_S."""
    from fedsllm.roles import wait_for_stop
    from fedsllm.wire.rpc import stop_server

    def tick() -> None:
        if adapters is not None:
            adapters.tick()
        if local is not None:
            local.tick()

    wait_for_stop(tick=tick)
    dropped = steps.refuse_steps()
    if dropped:
        log.info("stopping: %d queued steps refused (their clients re-send them)", dropped)
    stop_server(server, grace_s=grace_s)
    if adapters is not None:
        adapters.timeout_s = FINAL_WAIT_S
        # The fed server keeps the server adapter in its run directory: this
        # role writes nothing outside its own work directory.
        adapters.tick(force=True)  # a last round that ended since the last poll
    if local is not None:
        try:
            local.save("exit", timeout_s=FINAL_WAIT_S)
        except TimeoutError:
            log.warning("no checkpoint at exit: the step worker stayed busy; "
                        "the previous one stands")  # fmt: skip
    if adapters is not None:
        adapters.push(final=True, timeout_s=FINAL_WAIT_S)
    steps.close(timeout_s=2.0)


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


@role_main(log)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fedsllm.cli import configure_logging

    configure_logging(args.log_level, "main_server")
    from fedsllm.bootstrap import SettingError, parse_bind, resolve
    from fedsllm.errors import StateError, WireError
    from fedsllm.model.counts import count_scenario
    from fedsllm.model.lora import adapter_to_bytes
    from fedsllm.proto import main_server_pb2_grpc
    from fedsllm.roles import (
        RoleStopping,
        align_clock,
        bindable,
        binding,
        build_role_part,
        build_role_shaper,
        check_own_certificate,
        compute_context,
        install_stop_signals,
        make_pacer,
        pace_downlink,
        record_emulation,
        resolve_role_paths,
        role_base_file,
        role_security,
        role_start,
        wait_for_fed_server,
    )
    from fedsllm.security.identity import Identity
    from fedsllm.state import open_store
    from fedsllm.telemetry.service import start_sender
    from fedsllm.trace import Tracer
    from fedsllm.wire.rpc import create_server, make_channel
    from main_server.compute import LocalWorker, ServerTrainer, StepQueue
    from main_server.service import MainServerService
    from main_server.step_checks import StepLimits

    try:
        security = role_security(args)
        check_own_certificate(security, Identity("main_server"))
        fed_address, work_dir = resolve_role_paths(args, security)
        # Started beside the fed server, which may still be coming up.
        wait_for_fed_server(fed_address, security, STARTUP_TIMEOUT_S)
        scenario, scenario_hash, info = role_start(args, fed_address, work_dir, security)
        bind_setting = resolve(
            "--bind", args.bind, "FEDSLLM_MAIN_BIND", "run.main_address",
            scenario.run.main_address, default="127.0.0.1:0", parse=parse_bind,
        )  # fmt: skip
        # Refused now, before the base is built and the fed server joined.
        bind = bindable(bind_setting)
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
    # This role's checkpoints: its own work directory, nowhere else.
    store = open_store("main_server", work_dir / "state", owner=True)
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
    # Until here SIGTERM ends the process at once (nothing to save yet); from
    # here on it only sets a flag that every wait below watches.
    stop = install_stop_signals()
    fed_peer = f"the fed server at {fed_address}"
    try:
        join_main_server(
            fed_channel, scenario_hash, base_hash, stop, security=security, peer=fed_peer
        )
    except (SettingError, RoleStopping) as err:
        log.error("%s", err)
        tracer.close()
        telemetry.close(timeout_s=3.0)
        telemetry_channel.close()
        fed_channel.close()
        return 2 if isinstance(err, SettingError) else 0
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

    def adapter(timeout_s: float | None = None) -> bytes:
        return steps.call(lambda t: t.adapter_bytes(adapter_to_bytes), timeout_s)

    # Restored before serving: the first step a client sends sees the adapter
    # and optimizer the last checkpoint holds.
    local = LocalCheckpoints(store, steps, scenario_hash)
    # Before the first step of each new round: every step of the rounds before
    # is in the checkpoint, however fast the rounds (the fed server's Status is
    # polled only once a second).
    steps.on_new_round = local.save_on_worker
    try:
        snapshot = local.restore()
    except (StateError, WireError) as err:
        log.error("%s", err)
        steps.close()
        tracer.close()
        telemetry.close(timeout_s=3.0)
        telemetry_channel.close()
        fed_channel.close()
        return 2
    adapters = AdapterCheckpoints(
        fed_channel,
        adapter,
        scenario.link.chunk_bytes,
        on_round=lambda: local.save("round completed", timeout_s=adapters.timeout_s),
        rejoin=lambda: join_main_server(
            fed_channel, scenario_hash, base_hash, stop, security=security, peer=fed_peer
        ),
    )
    local.pushed_round = lambda: adapters.pushed
    if snapshot is not None:
        adapters.completed = adapters.pushed = int(snapshot.extra.get("pushed_round", -1))

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
        stop=stop,
    )
    with binding(bind_setting.source, bind):
        server, port = create_server(
            bind,
            [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(service, s)],
            security=security,
        )
    log.info("serving MainServer on port %d", port)

    serve_until_stopped(server, steps, adapters, local)
    record_emulation(tracer, pacer, shaper)
    tracer.close()
    # The fed server waits for this source's final push before it stops;
    # bounded well inside the launcher's grace period.
    telemetry.close(timeout_s=3.0)
    telemetry_channel.close()
    fed_channel.close()
    log.info(
        "stopped after %d server updates, %d train steps; since this start: %d steps "
        "(eval included) in %d worker passes, %.1f s busy (%.1f steps/s), deepest queue %d",
        trainer.num_updates, trainer.num_steps, steps.num_steps, steps.num_passes, steps.busy_s,
        steps.num_steps / steps.busy_s if steps.busy_s > 0 else 0.0, steps.max_depth,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
