"""`fedsllm watch RUN_DIR`: a run's telemetry records, live, as JSON lines.

Argument parsing and printing only; the work is
`fedsllm.telemetry.watch.watch_run`, imported when the command runs so that
`fedsllm --help` stays fast. A RUN_DIR that is not a run directory, or a run
without watcher credentials, is one line naming RUN_DIR (exit 2); a refused
credential is one line naming its file or variable (exit 2); nothing serving
the run and no launcher running it is one line (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsllm.telemetry.records import TelemetryRecord


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="print a run's telemetry records live, as JSON lines, until the run ends",
        description=(
            "Follow the telemetry of the run in RUN_DIR, from its first record, as the "
            "read-only watcher identity: every span and event of every role, one JSON "
            "object per line on standard output (the form of RUN_DIR/trace/*.jsonl), "
            "until the fed server closes its collector and no launcher runs RUN_DIR "
            "(exit 0). It reads the run's unix socket RUN_DIR/telemetry.sock (else the fed "
            "address in RUN_DIR/endpoints.json) with the token in RUN_DIR/watcher/token "
            "(FEDSLLM_TOKEN_FILE, FEDSLLM_TOKEN or FEDSLLM_TLS_* when set instead, for a "
            "fed server started by hand). It can follow the telemetry and read status; "
            "it can change nothing. Exit 1 when for 30 s no fed server answers and no "
            "launcher runs RUN_DIR."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a live run")
    parser.set_defaults(func=_watch)


def _watch(args: argparse.Namespace) -> int:
    from fedsllm.telemetry.watch import RunGone, check_run_dir, watch_run

    run_dir = check_run_dir(args.run_dir)

    def emit(rec: TelemetryRecord) -> None:
        sys.stdout.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")
        sys.stdout.flush()

    try:
        watch_run(run_dir, emit)
    except RunGone as err:
        print(f"fedsllm: watch: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`fedsllm watch RUN | head`): not an error. Point
        # stdout at nothing so the interpreter's last flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
