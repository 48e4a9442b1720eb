"""Network-namespace topology for the tc backend, and the Shaper that drives it.

Layout of one run (every name the host can see is `fsl-<id>-<role>`: the
project prefix `fsl-`, the run id and a dash, so cleanup removes exactly
what this run created, runs never collide, and `project_footprint` finds
what a run has on the host without looking at anything else there):

    fsl-<id>-br     a Linux bridge br0 with one port per endpoint, p-<role>
    fsl-<id>-fed    eth0 10.77.0.1/24   fed server + controller
    fsl-<id>-main   eth0 10.77.0.2/24   main server
    fsl-<id>-c<k>   eth0 10.77.0.<10+k>/24   client k (k < 200)

Each endpoint's eth0 is one end of a veth pair whose other end, p-<role>,
is a port of br0 in the bridge namespace. Nothing is ever created in the
caller's namespace: the interface names br0, eth0 and p-<role> exist only
inside this run's own namespaces, where no other name can clash with them
(so they need neither prefix nor run id, nor to fit 15 characters with
them). The 10.77.0.0/24 subnet lives only inside this run's isolated
namespaces, so it cannot clash with the host's or another run's.

Shaping, per client k (htb, see `fedsllm.link.tc`):
- uplink = htb on eth0's egress in fsl-<id>-c<k>: everything client k sends;
- downlink = htb on p-c<k>'s egress in the bridge namespace: everything the
  bridge forwards toward client k (from main and fed). Egress on the bridge
  port shapes the downlink without an ifb device or ingress policing.
Traffic between fed and main never crosses a client port, so it is unshaped.
Every veth gets gso_max_segs 1: with GSO a sender hands htb 64 KiB
super-packets, and htb lets a packet out whenever its tokens are >= 0 and
charges the debt afterwards, so the first 64 KiB of every transfer went out
unpaced (measured: 256 KiB at 10 Mbit/s arrived 32% early). One segment
per skb makes htb's accounting per wire packet.
Control ports (health, allocation pushes) go to an unshaped priority class
on both egresses; the control service must listen on a port of its own for
adapter transfers to the fed server to stay shaped.

No netem in this kernel: the tc backend emulates propagation delay in the
sending process (`TcShaper.pace` waits once per message), not in the kernel.

Privileges: needs root, or an unprivileged user+mount+net namespace
(`unshare --user --map-root-user --net --mount`); otherwise LinkError.
Cleanup (`ip netns del` of this run's namespaces, which takes their veths
and bridge with them) is idempotent and runs on normal exit, on exceptions,
on KeyboardInterrupt, at interpreter exit, and on SIGTERM while the
context is entered. It never kills processes: whoever launched a process
in a namespace stops it by its pid.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import NamedTuple

from fedsllm.errors import LinkError
from fedsllm.link.base import Direction, LinkStats, Shaper, check_client_id, check_rate
from fedsllm.link.tc import (
    SHAPED_CLASSID,
    Cmd,
    Runner,
    htb_change_cmd,
    run_cmds,
    shaped_egress_cmds,
    tc_rate_bps,
)
from fedsllm.link.token import TokenShaper

SUBNET = "10.77.0.0/24"
PREFIX_LEN = 24
MAX_CLIENTS = 200
BRIDGE_ROLE = "br"
BRIDGE_DEV = "br0"
ENDPOINT_DEV = "eth0"
PROJECT_PREFIX = "fsl-"
"""Start of every name this project creates where the host can see it (its
namespaces); the run id and a dash follow (see `run_prefix`)."""
_RUN_ID_RE = re.compile(r"^[a-z0-9]{1,16}$")
_ROLE_ADDR = {"fed": "10.77.0.1", "main": "10.77.0.2"}
_NETNS_LINE_RE = re.compile(r"^(\S+)(?:\s+\(id:\s*(\d+)\))?")
_LINK_NAME_RE = re.compile(r"^\d+:\s+([^\s:@]+)(?:@\S*)?:")
_LINK_NETNS_RE = re.compile(r"\blink-netns\s+(\S+)")
_LINK_NETNSID_RE = re.compile(r"\blink-netnsid\s+(\d+)")


def check_run_id(run_id: object) -> str:
    """`run_id` itself when it is 1-16 characters of [a-z0-9]; LinkError otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise LinkError(f"run_id must match [a-z0-9]{{1,16}}, got {run_id!r}")
    return run_id


def run_prefix(run_id: str | None = None) -> str:
    """`fsl-<run_id>-`, the start of every name of one run; `fsl-` (every run) for None.

    The trailing dash keeps run "ab" from claiming run "abc"'s names.
    """
    return PROJECT_PREFIX if run_id is None else f"{PROJECT_PREFIX}{check_run_id(run_id)}-"


class Footprint(NamedTuple):
    """What the project (or one run) has where the host can see it."""

    namespaces: frozenset[str]
    """Named network namespaces whose name starts with the prefix."""
    links: frozenset[str]
    """Links of the caller's namespace named with the prefix, or with their
    other end (veth peer, ...) in one of the prefix's namespaces. The topology
    never creates one, so this is empty unless something leaked."""


def _list_netns(runner: Runner) -> dict[str, str | None]:
    """Named namespaces -> their id as seen from here (None when unassigned).

    `ip netns list` lines look like "name" or "name (id: 3)".
    """
    (out,) = run_cmds([["ip", "netns", "list"]], runner=runner)
    found: dict[str, str | None] = {}
    for line in out.splitlines():
        match = _NETNS_LINE_RE.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def project_footprint(run_id: str | None = None, *, runner: Runner = subprocess.run) -> Footprint:
    """The namespaces and caller-namespace links that belong to the project,
    or to run `run_id` only: those named with `run_prefix(run_id)`.

    Reads `ip netns list` and `ip -o link show`, and keeps nothing else, so
    a test that compares this before and after a run compares only what the
    project made (Docker's veths and bridges, other runs' namespaces, and
    anything else on the host are outside it). Needs no root.
    """
    prefix = run_prefix(run_id)
    netns = _list_netns(runner)
    ours = frozenset(name for name in netns if name.startswith(prefix))
    ours_by_id = {nsid: name for name, nsid in netns.items() if nsid is not None and name in ours}
    (out,) = run_cmds([["ip", "-o", "link", "show"]], runner=runner)
    links = set()
    for line in out.splitlines():
        match = _LINK_NAME_RE.match(line)
        if not match:
            continue
        peer_ns = _LINK_NETNS_RE.search(line)
        peer_id = _LINK_NETNSID_RE.search(line)
        if (
            match.group(1).startswith(prefix)
            or (peer_ns is not None and peer_ns.group(1) in ours)
            or (peer_id is not None and peer_id.group(1) in ours_by_id)
        ):
            links.add(match.group(1))
    return Footprint(namespaces=ours, links=frozenset(links))


def client_role(client_id: int) -> str:
    """Role name of client `client_id` ("c0", "c1", ...)."""
    return f"c{check_client_id(client_id)}"


def check_privileges(geteuid: Callable[[], int] = os.geteuid) -> None:
    """Refuse clearly when namespaces cannot be created by this process."""
    if geteuid() != 0:
        raise LinkError(
            "link.backend=tc needs root (or an unprivileged user namespace: run the "
            "launcher under `unshare --user --map-root-user --net --mount`); "
            f"this process has euid {geteuid()}. Use link.backend=token instead."
        )


class NetnsTopology:
    """Namespaces + bridge + veths + htb for one run; a context manager.

    Build with the run id and client count, enter it to create everything,
    leave it to remove everything. An instance that is never entered is a
    handle on a topology another process created (same run id): its
    `set_client_rates`, `exec_prefix` and `address` work, its cleanup does
    nothing, because it created nothing.
    """

    def __init__(
        self,
        run_id: str,
        num_clients: int,
        *,
        control_ports: Sequence[int] = (),
        up_bps: float = math.inf,
        down_bps: float = math.inf,
        runner: Runner = subprocess.run,
    ) -> None:
        check_run_id(run_id)
        if (
            not isinstance(num_clients, int)
            or isinstance(num_clients, bool)
            or not 1 <= num_clients <= MAX_CLIENTS
        ):
            raise LinkError(
                f"num_clients must be an int in [1, {MAX_CLIENTS}], got {num_clients!r}"
            )
        self.run_id = run_id
        self.num_clients = num_clients
        self.control_ports = tuple(control_ports)
        # Validate initial rates now so a bad value fails before anything exists.
        tc_rate_bps(up_bps)
        tc_rate_bps(down_bps)
        initial = (check_rate("up_bps", up_bps), check_rate("down_bps", down_bps))
        self._rates = {k: initial for k in range(num_clients)}
        self._runner = runner
        self._lock = threading.Lock()
        self._created: list[str] = []
        self._prev_sigterm: signal.Handlers | Callable[..., object] | int | None = None

    # ------------------------------------------------------------ naming

    @property
    def roles(self) -> list[str]:
        """Endpoint roles: fed, main, c0 .. c<K-1>."""
        return ["fed", "main"] + [client_role(k) for k in range(self.num_clients)]

    def _check_role(self, role: str | int) -> str:
        if isinstance(role, int) and not isinstance(role, bool) and 0 <= role < self.num_clients:
            return client_role(role)  # the per-chunk path (TcShaper.pace): no list to build
        name = client_role(role) if isinstance(role, int) else role
        if name not in self.roles and name != BRIDGE_ROLE:
            raise LinkError(
                f"role must be fed, main, br or c0..c{self.num_clients - 1}, got {role!r}"
            )
        return name

    def netns(self, role: str | int) -> str:
        """Namespace name of a role (an int is a client id)."""
        return run_prefix(self.run_id) + self._check_role(role)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this topology consists of, bridge first."""
        return [self.netns(BRIDGE_ROLE)] + [self.netns(r) for r in self.roles]

    def address(self, role: str | int) -> str:
        """IPv4 address of a role's eth0 (fed .1, main .2, client k .10+k)."""
        name = self._check_role(role)
        if name == BRIDGE_ROLE:
            raise LinkError("the bridge namespace has no address")
        return _ROLE_ADDR.get(name) or f"10.77.0.{10 + int(name[1:])}"

    def exec_prefix(self, role: str | int) -> list[str]:
        """argv prefix that runs a command inside a role's namespace."""
        return ["ip", "netns", "exec", self.netns(role)]

    def _port(self, role: str) -> str:
        return f"p-{role}"

    # ------------------------------------------------------------ commands

    def setup_cmds(self) -> list[Cmd]:
        """Every command `__enter__` runs after creating the namespaces, in order."""
        br = self.netns(BRIDGE_ROLE)
        cmds: list[Cmd] = [
            ["ip", "-n", br, "link", "set", "lo", "up"],
            ["ip", "-n", br, "link", "add", BRIDGE_DEV, "type", "bridge"],
            ["ip", "-n", br, "link", "set", BRIDGE_DEV, "up"],
        ]
        for role in self.roles:
            ns, port = self.netns(role), self._port(role)
            cmds += [
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", ns, "link", "add", ENDPOINT_DEV, "type", "veth",
                 "peer", "name", port, "netns", br],
                ["ip", "-n", ns, "link", "set", ENDPOINT_DEV, "gso_max_segs", "1"],
                ["ip", "-n", br, "link", "set", port, "gso_max_segs", "1"],
                ["ip", "-n", br, "link", "set", port, "master", BRIDGE_DEV],
                ["ip", "-n", br, "link", "set", port, "up"],
                ["ip", "-n", ns, "addr", "add", f"{self.address(role)}/{PREFIX_LEN}",
                 "dev", ENDPOINT_DEV],
                ["ip", "-n", ns, "link", "set", ENDPOINT_DEV, "up"],
            ]  # fmt: skip
        for k in range(self.num_clients):
            up, down = self._rates[k]
            role = client_role(k)
            cmds += shaped_egress_cmds(ENDPOINT_DEV, up, self.control_ports, netns=self.netns(role))
            cmds += shaped_egress_cmds(self._port(role), down, self.control_ports, netns=br)
        return cmds

    def rate_change_cmds(self, client_id: int, up_bps: float, down_bps: float) -> list[Cmd]:
        """The two `tc class change` commands for a live rate change (pure)."""
        role = self._check_role(client_id)
        return [
            htb_change_cmd(ENDPOINT_DEV, SHAPED_CLASSID, up_bps, netns=self.netns(role)),
            htb_change_cmd(
                self._port(role), SHAPED_CLASSID, down_bps, netns=self.netns(BRIDGE_ROLE)
            ),
        ]

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> NetnsTopology:
        check_privileges()
        existing = self._list_netns()
        clash = [ns for ns in self.namespaces if ns in existing]
        if clash:
            raise LinkError(
                f"namespace {clash[0]} already exists (left by an earlier run with id "
                f"{self.run_id!r}?): remove it with `ip netns del {clash[0]}` or use another run id"
            )
        atexit.register(self.cleanup)
        self._install_sigterm()
        try:
            for ns in self.namespaces:
                try:
                    run_cmds([["ip", "netns", "add", ns]], runner=self._runner)
                except LinkError as err:
                    raise LinkError(
                        f"{err} (creating namespaces needs root or `unshare --user "
                        "--map-root-user --net --mount`)"
                    ) from None
                self._created.append(ns)
            run_cmds(self.setup_cmds(), runner=self._runner)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the namespaces this instance created; safe to call any number of times.

        Deleting a namespace destroys the veth ends and bridge inside it, and
        a veth pair dies with either end, so nothing else needs undoing. A
        namespace already gone is skipped; other namespaces are never read
        beyond their names.
        """
        with self._lock:
            created, self._created = self._created, []
        if created:
            existing = self._list_netns()
            for ns in reversed(created):
                if ns in existing:
                    run_cmds([["ip", "netns", "del", ns]], runner=self._runner)
        atexit.unregister(self.cleanup)
        self._restore_sigterm()

    def _list_netns(self) -> set[str]:
        return set(_list_netns(self._runner))

    def _install_sigterm(self) -> None:
        # SIGTERM's default action skips atexit; turn it into SystemExit so
        # the with-block unwinds and cleanup runs. Only when nobody else
        # handles SIGTERM and only from the main thread (signal's rule).
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def _raise_exit(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._prev_sigterm = signal.signal(signal.SIGTERM, _raise_exit)

    def _restore_sigterm(self) -> None:
        if self._prev_sigterm is None:
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None

    # ------------------------------------------------------------ live control

    def set_client_rates(self, client_id: int, up_bps: float, down_bps: float) -> None:
        """Change client `client_id`'s rates live with `tc class change` (~3.5 ms).

        Both rates are validated before either command runs.
        """
        cmds = self.rate_change_cmds(client_id, up_bps, down_bps)
        up, down = check_rate("up_bps", up_bps), check_rate("down_bps", down_bps)
        with self._lock:
            run_cmds(cmds, runner=self._runner)
            self._rates[client_id] = (up, down)

    def client_rates(self, client_id: int) -> tuple[float, float]:
        """Last rates set for a client (inf = unshaped)."""
        self._check_role(client_id)
        with self._lock:
            return self._rates[client_id]


class TcShaper(Shaper):
    """The `Shaper` of the tc backend: the kernel paces, this class steers it.

    `set_rates` becomes `tc class change` on the topology (rates divided by
    `time_dilation`, so durations stretch as in the token backend); `pace` never
    waits for bandwidth (htb does) but, for the first chunk of a message,
    waits the one-way propagation delay (x time_dilation) since this kernel
    has no netem. Byte counts in `stats()` are what the process handed over;
    `busy_s` is 0 because the kernel's timing is not visible here (the main
    server measures each upload's one-way time at the receiving end).
    """

    def __init__(
        self,
        topology: NetnsTopology,
        *,
        propagation_delay_s: float = 0.0,
        time_dilation: float = 1.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._topology = topology
        kwargs: dict[str, object] = {}
        if clock is not None:
            kwargs["clock"] = clock
        if sleep is not None:
            kwargs["sleep"] = sleep
        # Unshaped token links: only the per-message delay and the counters.
        self._delay = TokenShaper(
            propagation_delay_s=propagation_delay_s,
            time_dilation=time_dilation,
            **kwargs,  # type: ignore[arg-type]
        )

    def set_rates(self, client_id: int, up_bps: float, down_bps: float) -> None:
        # Dilation stretches durations, so the kernel gets rate / dilation.
        dil = self._delay.time_dilation
        up, down = check_rate("up_bps", up_bps), check_rate("down_bps", down_bps)
        self._topology.set_client_rates(client_id, up / dil, down / dil)

    def rates(self, client_id: int) -> tuple[float, float]:
        dil = self._delay.time_dilation
        up, down = self._topology.client_rates(client_id)
        return up * dil, down * dil

    def pace(
        self, client_id: int, direction: Direction, nbytes: int, *, new_message: bool = False
    ) -> None:
        self._topology.client_rates(client_id)  # rejects an unknown client
        self._delay.pace(client_id, direction, nbytes, new_message=new_message)

    def stats(self) -> dict[tuple[int, Direction], LinkStats]:
        return {
            key: LinkStats(
                num_bytes=s.num_bytes, num_chunks=s.num_chunks, busy_s=0.0, shaped_bytes=0
            )
            for key, s in self._delay.stats().items()
        }
