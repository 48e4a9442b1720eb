"""Live progress of a run (round, client, loss), rendered with rich.

Follows the fed server's telemetry collector (a Subscribe stream on the run's
telemetry socket, fedsllm.telemetry.service.TelemetryWatcher) and reads the
typed records the roles send, so the display cannot disagree with the run's
records and needs no shared file.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from fedsllm.config import ScenarioConfig
from fedsllm.telemetry.records import EventKind, TelemetryRecord
from fedsllm.words import counted


class RunProgress:
    def __init__(
        self, scenario: ScenarioConfig, trace_dir: Path, console: Any, enabled: bool = True
    ) -> None:
        self.scenario = scenario
        self.run_dir = trace_dir.parent
        self.watcher: Any = None
        self.console = console
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[int, Any] = {}
        self._address: str | None = None
        self._watcher_type: Any = None

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            training = self.scenario.training
            # With an allocation policy the controller decides rounds and steps;
            # the total is filled in when its "plan" event appears.
            total = (
                training.num_rounds * training.num_local_steps
                if self.scenario.policy.name == "fixed_steps"
                else None
            )
            for k in range(self.scenario.clients.num_clients):
                self._tasks[k] = self._progress.add_task(
                    f"client {k}", total=total, info="starting"
                )
            from fedsllm.telemetry import socket_address
            from fedsllm.telemetry.service import TelemetryWatcher

            # Built in update() once the launcher has written its credentials
            # (the local socket's server wants the launcher's token); the fed
            # server need not be up yet: the watcher connects when it is.
            self._address = socket_address(self.run_dir)
            self._watcher_type = TelemetryWatcher
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def update(self) -> None:
        if self.watcher is None and self._address is not None:
            from fedsllm.security.run_secrets import read_launcher_security

            security = read_launcher_security(self.run_dir)
            if security is not None:
                self.watcher = self._watcher_type(self._address, security=security)
        if self.watcher is not None:
            for rec in self.watcher.poll():
                self.show(rec)

    def show(self, rec: TelemetryRecord) -> None:
        """Reflect one record in the display (events only)."""
        event = rec.event
        if event is None or self._progress is None:
            return
        if event is EventKind.PLAN:
            rounds, steps = rec.counts["num_rounds"], rec.counts["num_local_steps"]
            for task in self._tasks.values():
                self._progress.update(task, total=rounds * steps)
            self.console.print(
                f"plan ({rec.labels['policy']}): eta {rec.values['eta']:.3f}, "
                f"{counted(rounds, 'round')} x {counted(steps, 'local step')}, "
                f"predicted {rec.values['predicted_total_s']:.1f} s"
            )
        elif event is EventKind.TRAIN_LOSS and rec.client in self._tasks:
            self._progress.update(
                self._tasks[rec.client],
                advance=1,
                info=f"round {rec.round} step {rec.step} loss {rec.values['loss']:.4f}",
            )
        elif event is EventKind.VAL_LOSS:
            label = "initial" if rec.round < 0 else f"after round {rec.round}"
            self.console.print(f"validation loss {label}: {rec.values['loss']:.4f}")
        elif event is EventKind.ROUND_DONE:
            self.console.print(
                f"round {rec.round} aggregated ({rec.counts.get('num_clients', '?')} clients)"
            )


def prepare_base(scenario: ScenarioConfig, console: Any, enabled: bool = True) -> None:
    """Pretrain the run's base once, before any role starts, and say so.

    The first run with a pretrained preset spends tens of seconds training the
    base; the roles would do it silently behind "starting". Doing it here with
    a progress bar tells the user what happens, that it happens once, and where
    the result is kept; every role then finds the cache.
    """
    from fedsllm.model.build import prepare_base as prepare
    from fedsllm.model.pretrain import cache_dir

    bar: Any = None
    task: Any = None

    def on_step(done: int, total: int, loss: float) -> None:
        nonlocal bar, task
        if not enabled:
            return
        if bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            console.print(
                f"pretraining the {scenario.model.preset} base once ({total} steps); it is "
                f"cached under {cache_dir()} and later runs load it in milliseconds"
            )
            bar = Progress(
                TextColumn("base pretraining"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=console,
                transient=True,
            )
            bar.__enter__()
            task = bar.add_task("pretrain", total=total, loss="-")
        bar.update(task, completed=done, loss=f"{loss:.3f}")

    try:
        result = prepare(scenario, on_step)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if result is None or not enabled:
        return
    if result.cache_hit:
        console.print(f"base model: pretrained {scenario.model.preset} loaded from the cache")
    else:
        console.print(
            f"base model pretrained in {result.seconds:.1f} s (loss {result.first_loss:.3f} "
            f"-> {result.last_loss:.3f}), cached at {result.cache_path}"
        )
