"""Kernel link shaping: build tc (htb) command lists, and run them in one place.

Every function here except `run_cmds` is pure: it returns argv lists and
touches nothing, so the exact commands are testable without root (the
mininet `bwCmds` pattern). `run_cmds` is the only executor. The namespace
topology that decides which device gets which commands is in
`fedsllm.link.netns`.

Facts this module is built on (measured on the target kernel while planning):
- htb goodput between namespaces came out 4.3% below target, because tc
  counts Ethernet + IP + TCP headers (1514 wire bytes per 1448 payload
  bytes). Rates handed to tc are therefore scaled by 1514/1448 so the
  *payload* rate matches the target.
- A live `tc qdisc change` of a tbf stalled TCP; `tc class change` of an htb
  class took about 3.5 ms and applied mid-transfer. So: htb only, never tbf.
- Control RPCs (health checks, allocation pushes) waited 54 ms behind tensor
  traffic in a single shaped class. Each shaped egress therefore gets two
  htb classes: 1:10 (unshaped, priority 0) for the control ports, matched by
  u32 on source or destination port, and 1:20 (the link rate, priority 1,
  the default) for everything else.
- This kernel has no netem; propagation delay under tc is emulated
  in-process by the sender (see `fedsllm.link.netns.TcShaper`).
"""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Callable, Sequence

from fedsllm.errors import LinkError
from fedsllm.link.base import check_rate

logger = logging.getLogger(__name__)

HEADER_SCALE = 1514 / 1448
"""Wire bytes per payload byte of a full-size TCP segment (Ethernet/IP/TCP)."""
MIN_RATE_BPS = 8_000.0
"""Lowest payload rate tc is asked to shape, bit/s (htb's timing degrades below)."""
MAX_RATE_BPS = 40e9
"""Highest finite payload rate accepted, bit/s (above any veth's throughput)."""
UNSHAPED_RATE_BPS = 100_000_000_000
"""tc rate (bit/s) standing for 'unshaped': the control class and any link
whose rate is 0 or inf."""
QUANTUM_BYTES = 1514
"""htb DRR quantum; set explicitly so huge rates do not trip r2q warnings."""
ROOT_HANDLE = "1:"
CONTROL_CLASSID = "1:10"
SHAPED_CLASSID = "1:20"

Cmd = list[str]


def tc_rate_bps(rate_bps: float) -> int:
    """The integer rate to give tc for a payload rate: scaled by HEADER_SCALE,
    or UNSHAPED_RATE_BPS for 0/inf.

    Raises LinkError for a negative/NaN rate or a finite rate outside
    [MIN_RATE_BPS, MAX_RATE_BPS], rather than logging and carrying on.
    """
    value = check_rate("rate_bps", rate_bps)
    if math.isinf(value):
        return UNSHAPED_RATE_BPS
    if not MIN_RATE_BPS <= value <= MAX_RATE_BPS:
        raise LinkError(
            f"rate_bps must be in [{MIN_RATE_BPS:.0f}, {MAX_RATE_BPS:.0f}] bit/s for tc "
            f"(0 or inf = unshaped), got {rate_bps!r}"
        )
    return round(value * HEADER_SCALE)


def _tc(netns: str | None) -> Cmd:
    return ["tc", "-n", netns] if netns else ["tc"]


def htb_root_cmds(dev: str, *, netns: str | None = None) -> list[Cmd]:
    """An htb root qdisc whose unclassified traffic goes to SHAPED_CLASSID."""
    default_minor = SHAPED_CLASSID.split(":")[1]
    return [
        _tc(netns)
        + [
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "handle",
            ROOT_HANDLE,
            "htb",
            "default",
            default_minor,
        ]
    ]


def _class_args(dev: str, classid: str, rate: int, prio: int) -> Cmd:
    return [
        "dev", dev, "parent", ROOT_HANDLE, "classid", classid, "htb",
        "rate", f"{rate}bit", "ceil", f"{rate}bit", "prio", str(prio),
        "quantum", str(QUANTUM_BYTES),
    ]  # fmt: skip


def htb_class_cmds(
    dev: str, classid: str, rate_bps: float, *, netns: str | None = None, prio: int = 1
) -> list[Cmd]:
    """One htb class directly under the root, capped at `rate_bps` (payload
    rate; ceil = rate so it never borrows)."""
    rate = tc_rate_bps(rate_bps)
    return [_tc(netns) + ["class", "add"] + _class_args(dev, classid, rate, prio)]


def htb_change_cmd(
    dev: str, classid: str, rate_bps: float, *, netns: str | None = None, prio: int = 1
) -> Cmd:
    """Change an htb class's rate live (applies to packets already queued)."""
    rate = tc_rate_bps(rate_bps)
    return _tc(netns) + ["class", "change"] + _class_args(dev, classid, rate, prio)


def port_filter_cmds(
    dev: str, ports: Sequence[int], flowid: str, *, netns: str | None = None
) -> list[Cmd]:
    """u32 filters sending IPv4 TCP/UDP traffic to or from each port to `flowid`."""
    cmds: list[Cmd] = []
    for port in ports:
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise LinkError(f"control port must be an int in [1, 65535], got {port!r}")
        for field in ("dport", "sport"):
            cmds.append(
                _tc(netns)
                + ["filter", "add", "dev", dev, "parent", ROOT_HANDLE, "protocol", "ip",
                   "prio", "1", "u32", "match", "ip", field, str(port), "0xffff",
                   "flowid", flowid]
            )  # fmt: skip
    return cmds


def shaped_egress_cmds(
    dev: str, rate_bps: float, control_ports: Sequence[int] = (), *, netns: str | None = None
) -> list[Cmd]:
    """Everything one shaped egress needs: htb root, the unshaped control class,
    the shaped class at `rate_bps`, and the control-port filters."""
    return (
        htb_root_cmds(dev, netns=netns)
        + htb_class_cmds(dev, CONTROL_CLASSID, math.inf, netns=netns, prio=0)
        + htb_class_cmds(dev, SHAPED_CLASSID, rate_bps, netns=netns, prio=1)
        + port_filter_cmds(dev, control_ports, CONTROL_CLASSID, netns=netns)
    )


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_cmds(cmds: Sequence[Cmd], *, runner: Runner = subprocess.run) -> list[str]:
    """Run each command in order; the only place this package executes anything.

    Stops at the first failure with a LinkError that quotes the command and
    its stderr. Returns each command's stdout. `runner` is injectable for
    tests (same signature as subprocess.run).
    """
    outputs: list[str] = []
    for cmd in cmds:
        logger.debug("run %s", " ".join(cmd))
        try:
            proc = runner(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise LinkError(f"{cmd[0]!r} not found: install iproute2 ({' '.join(cmd)})") from None
        if proc.returncode != 0:
            stderr = (proc.stderr or "").strip() or "(no stderr)"
            raise LinkError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}: {stderr}")
        outputs.append(proc.stdout)
    return outputs
