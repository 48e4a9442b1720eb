"""A stand-in role for launcher tests: sleeps until signalled (python -m this module).

With `--ignore-term` it ignores SIGTERM, like a role stuck in a blocking call,
so the launcher's SIGKILL escalation is exercised.
"""

from __future__ import annotations

import signal
import sys
import time

if __name__ == "__main__":
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("sleeper ready", flush=True)
    time.sleep(120)
