"""Tests for fedsllm/link/netns.py: command plans without root; a real
two-client topology with TCP traffic, live rate changes and exact cleanup
with root (marker `root`).

Rule 24: the root tests look only at what they made. Each uses a fresh run
id, and compares `project_footprint(run_id)` (that run's namespaces and any
host link of theirs) before and after, never the host's whole `ip link`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time

import pytest

from fedsllm.errors import LinkError
from fedsllm.link.base import Direction
from fedsllm.link.netns import (
    Footprint,
    NetnsTopology,
    TcShaper,
    check_privileges,
    project_footprint,
    run_prefix,
)
from fedsllm.link.tc import tc_rate_bps

# ----------------------------------------------------------------- no root


class RecordingRunner:
    """Stands in for subprocess.run; fakes `ip netns list` from what it saw."""

    def __init__(self, existing: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.netns = set(existing)

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        out = ""
        if cmd[:3] == ["ip", "netns", "list"]:
            out = "".join(f"{n} (id: 1)\n" for n in sorted(self.netns))
        elif cmd[:3] == ["ip", "netns", "add"]:
            self.netns.add(cmd[3])
        elif cmd[:3] == ["ip", "netns", "del"]:
            self.netns.discard(cmd[3])
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")


def _run_id(kind: str) -> str:
    """A run id no other test, session or host process uses: kind + 6 hex digits."""
    return kind + secrets.token_hex(3)


EMPTY = Footprint(frozenset(), frozenset())


def test_names_addresses_and_exec_prefix():
    topo = NetnsTopology("ab12", 3)
    assert topo.namespaces == [
        "fsl-ab12-br", "fsl-ab12-fed", "fsl-ab12-main", "fsl-ab12-c0", "fsl-ab12-c1",
        "fsl-ab12-c2",
    ]  # fmt: skip
    assert [topo.address(r) for r in ("fed", "main", "c0", 2)] == [
        "10.77.0.1", "10.77.0.2", "10.77.0.10", "10.77.0.12",
    ]  # fmt: skip
    assert topo.exec_prefix(1) == ["ip", "netns", "exec", "fsl-ab12-c1"]
    assert topo.exec_prefix("main") == ["ip", "netns", "exec", "fsl-ab12-main"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"run_id": "Bad-Id", "num_clients": 1},
        {"run_id": "", "num_clients": 1},
        {"run_id": "x" * 17, "num_clients": 1},
        {"run_id": "ok", "num_clients": 0},
        {"run_id": "ok", "num_clients": 201},
        {"run_id": "ok", "num_clients": 1, "up_bps": 10.0},
        {"run_id": "ok", "num_clients": 1, "down_bps": -1.0},
    ],
)
def test_bad_construction_raises(kwargs):
    with pytest.raises(LinkError):
        NetnsTopology(**kwargs)


@pytest.mark.parametrize("role", ["c3", 3, "router", "c-1"])
def test_unknown_role_raises(role):
    with pytest.raises(LinkError, match="role"):
        NetnsTopology("ab12", 3).exec_prefix(role)


def test_setup_cmds_shape_each_client_both_ways():
    topo = NetnsTopology("r1", 2, control_ports=(7000,), up_bps=8e6, down_bps=4e6)
    cmds = topo.setup_cmds()
    # Nothing runs in the caller's namespace: every command names a namespace.
    assert all(c[1] == "-n" and c[2].startswith("fsl-r1-") for c in cmds)
    assert ["ip", "-n", "fsl-r1-c1", "link", "add", "eth0", "type", "veth", "peer", "name",
            "p-c1", "netns", "fsl-r1-br"] in cmds  # fmt: skip
    assert ["ip", "-n", "fsl-r1-main", "addr", "add", "10.77.0.2/24", "dev", "eth0"] in cmds
    shaped = [c for c in cmds if "classid" in c and c[c.index("classid") + 1] == "1:20"]
    where = {(c[2], c[c.index("dev") + 1]): c[c.index("rate") + 1] for c in shaped}
    assert where == {
        ("fsl-r1-c0", "eth0"): f"{tc_rate_bps(8e6)}bit",
        ("fsl-r1-br", "p-c0"): f"{tc_rate_bps(4e6)}bit",
        ("fsl-r1-c1", "eth0"): f"{tc_rate_bps(8e6)}bit",
        ("fsl-r1-br", "p-c1"): f"{tc_rate_bps(4e6)}bit",
    }
    # fed and main ports are not shaped.
    assert not any(c[0] == "tc" and ("p-fed" in c or "p-main" in c) for c in cmds)
    filters = [c for c in cmds if "filter" in c]
    assert len(filters) == 2 * 2 * 2  # 2 clients x 2 egresses x (sport, dport)


def test_rate_change_cmds_are_class_changes():
    topo = NetnsTopology("r1", 2)
    up, down = topo.rate_change_cmds(1, 2e6, math.inf)
    assert up[:6] == ["tc", "-n", "fsl-r1-c1", "class", "change", "dev"]
    assert up[up.index("rate") + 1] == f"{tc_rate_bps(2e6)}bit"
    assert down[:7] == ["tc", "-n", "fsl-r1-br", "class", "change", "dev", "p-c1"]
    assert down[down.index("rate") + 1] == f"{tc_rate_bps(math.inf)}bit"


def test_set_client_rates_validates_both_before_running():
    runner = RecordingRunner()
    topo = NetnsTopology("r1", 2, runner=runner)
    with pytest.raises(LinkError):
        topo.set_client_rates(0, 8e6, 1.0)
    assert runner.calls == []
    topo.set_client_rates(0, 8e6, 0)
    assert len(runner.calls) == 2
    assert topo.client_rates(0) == (8e6, math.inf)


def test_check_privileges_refuses_non_root():
    with pytest.raises(LinkError, match="needs root.*unshare --user --map-root-user"):
        check_privileges(geteuid=lambda: 1000)
    check_privileges(geteuid=lambda: 0)


def test_run_prefix():
    assert run_prefix() == "fsl-"
    assert run_prefix("ab12") == "fsl-ab12-"
    assert all(ns.startswith(run_prefix("ab12")) for ns in NetnsTopology("ab12", 3).namespaces)
    with pytest.raises(LinkError, match="run_id"):
        run_prefix("Bad-Id")


HOST_NETNS = """\
fsl-ab-br (id: 4)
fsl-ab-c0 (id: 5)
fsl-abc-br (id: 6)
fsl-xy-main
docker-ns (id: 7)
"""

HOST_LINKS = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT\\    \
link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
4: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DEFAULT\\    \
link/ether 02:fc:00:00:00:01 brd ff:ff:ff:ff:ff:ff
5: docker0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state DOWN\\    \
link/ether 02:42:ac:11:00:01 brd ff:ff:ff:ff:ff:ff
6: veth1a2b3c@if2: <BROADCAST,MULTICAST,UP> mtu 1500 master docker0 state UP\\    \
link/ether 46:25:c5:87:11:50 brd ff:ff:ff:ff:ff:ff link-netns docker-ns
7: leak0@if3: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    \
link/ether 46:25:c5:87:11:51 brd ff:ff:ff:ff:ff:ff link-netns fsl-ab-br
8: leak1@if9: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    \
link/ether 46:25:c5:87:11:52 brd ff:ff:ff:ff:ff:ff link-netnsid 5
9: fsl-ab-x@fsl-abc-y: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN\\    \
link/ether 46:25:c5:87:11:53 brd ff:ff:ff:ff:ff:ff
10: fsl-abc-y@fsl-ab-x: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN\\    \
link/ether 46:25:c5:87:11:54 brd ff:ff:ff:ff:ff:ff
11: other@if4: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    \
link/ether 46:25:c5:87:11:55 brd ff:ff:ff:ff:ff:ff link-netnsid 6
"""


class HostRunner:
    """Answers `ip netns list` and `ip -o link show` with fixed host output."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        out = {("ip", "netns", "list"): HOST_NETNS, ("ip", "-o", "link"): HOST_LINKS}
        return subprocess.CompletedProcess(cmd, 0, stdout=out[tuple(cmd[:3])], stderr="")


def test_project_footprint_keeps_only_the_prefix():
    runner = HostRunner()
    run = project_footprint("ab", runner=runner)
    assert run == Footprint(
        namespaces=frozenset({"fsl-ab-br", "fsl-ab-c0"}),
        # named fsl-ab-, or with the other end in fsl-ab-br (by name) / fsl-ab-c0 (by id 5)
        links=frozenset({"leak0", "leak1", "fsl-ab-x"}),
    )
    assert runner.calls == [["ip", "netns", "list"], ["ip", "-o", "link", "show"]]
    project = project_footprint(runner=HostRunner())
    assert project.namespaces == {"fsl-ab-br", "fsl-ab-c0", "fsl-abc-br", "fsl-xy-main"}
    assert project.links == {"leak0", "leak1", "fsl-ab-x", "fsl-abc-y", "other"}
    assert project_footprint("zz", runner=HostRunner()) == EMPTY
    with pytest.raises(LinkError, match="run_id"):
        project_footprint("fsl-ab", runner=HostRunner())


def _enter(topo: NetnsTopology) -> None:
    # Privileges are checked against the real process; pretend root.
    import fedsllm.link.netns as netns_mod

    orig = netns_mod.check_privileges
    netns_mod.check_privileges = lambda: None
    try:
        topo.__enter__()
    finally:
        netns_mod.check_privileges = orig


def test_cleanup_deletes_only_created_and_is_idempotent():
    runner = RecordingRunner(existing=("other-ns", "fsl-zz-br"))
    topo = NetnsTopology("r2", 1, runner=runner)
    _enter(topo)
    assert runner.netns == {"other-ns", "fsl-zz-br"} | set(topo.namespaces)
    topo.cleanup()
    topo.cleanup()
    assert runner.netns == {"other-ns", "fsl-zz-br"}
    deleted = [c[3] for c in runner.calls if c[:3] == ["ip", "netns", "del"]]
    assert sorted(deleted) == sorted(topo.namespaces)


def test_existing_namespace_is_refused_and_left_alone():
    runner = RecordingRunner(existing=("fsl-r3-c0",))
    topo = NetnsTopology("r3", 1, runner=runner)
    with pytest.raises(LinkError, match="fsl-r3-c0 already exists"):
        _enter(topo)
    assert runner.netns == {"fsl-r3-c0"}
    assert not any(c[:3] == ["ip", "netns", "add"] for c in runner.calls)


def test_failed_setup_removes_what_it_created():
    class FailingRunner(RecordingRunner):
        def __call__(self, cmd, **kwargs):
            if cmd[:2] == ["tc", "-n"]:
                self.calls.append(cmd)
                return subprocess.CompletedProcess(cmd, 2, stdout="", stderr="Error: nope")
            return super().__call__(cmd, **kwargs)

    runner = FailingRunner(existing=("keep",))
    topo = NetnsTopology("r4", 2, runner=runner)
    with pytest.raises(LinkError, match="nope"):
        _enter(topo)
    assert runner.netns == {"keep"}


def test_tc_shaper_divides_dilation_and_delays_per_message():
    runner = RecordingRunner()
    topo = NetnsTopology("r5", 1, runner=runner)
    now = [0.0]
    shaper = TcShaper(
        topo,
        propagation_delay_s=0.01,
        time_dilation=2.0,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    shaper.set_rates(0, 8e6, 4e6)
    assert topo.client_rates(0) == (4e6, 2e6)
    assert shaper.rates(0) == (8e6, 4e6)
    change = runner.calls[-2]
    assert change[change.index("rate") + 1] == f"{tc_rate_bps(4e6)}bit"
    shaper.pace(0, Direction.UP, 1_000_000, new_message=True)
    shaper.pace(0, Direction.UP, 1_000_000)
    assert now[0] == pytest.approx(0.02)  # the kernel paces bandwidth, not this
    assert shaper.stats()[(0, Direction.UP)].num_bytes == 2_000_000
    with pytest.raises(LinkError):
        shaper.pace(1, Direction.UP, 10)


# ----------------------------------------------------------------- root

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="needs root with iproute2 (ip, tc) to create network namespaces",
)

RECEIVER = r"""
import socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = srv.accept()
n, marks = 0, []
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    n += len(data)
    marks.append((time.monotonic(), n))
# Printed at the end: printing per recv() would fill the pipe and stall the flow.
print("\n".join(f"{t} {k}" for t, k in marks), flush=True)
"""

SENDER = r"""
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sock.sendall(b"\0" * int(sys.argv[3]))
sock.close()
"""

ECHO_SERVER = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = conn.recv(100)
    if not data:
        break
    conn.sendall(data)
"""

ECHO_CLIENT = r"""
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(int(sys.argv[3])):
    t0 = time.monotonic()
    sock.sendall(b"x" * 100)
    got = 0
    while got < 100:
        got += len(sock.recv(100))
    print(time.monotonic() - t0, flush=True)
    time.sleep(0.05)
"""

CONTROL_PORT = 7000


def _ip(*args: str, check: bool = True) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check).stdout


def _assert_run_exists(topo: NetnsTopology) -> None:
    """The run's namespaces and in-namespace links exist; nothing of it is on the host."""
    assert project_footprint(topo.run_id) == Footprint(frozenset(topo.namespaces), frozenset())
    br = topo.netns("br")
    br_links = _ip("-n", br, "-o", "link", "show")
    for role in topo.roles:
        assert f" p-{role}@" in br_links, (role, br_links)
        assert " eth0@" in _ip("-n", topo.netns(role), "-o", "link", "show"), role
    assert " br0:" in br_links


def _whole_host() -> tuple[str, str]:
    """The host-wide snapshot the old tests compared (rule 24 forbids it); only
    used to show that an unrelated change would have failed them."""
    return _ip("netns", "list"), _ip("-o", "link", "show")


class Procs:
    """Processes started in namespaces; stopped by their own pid, never by name."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, prefix: list[str], script: str, *args: object) -> subprocess.Popen:
        proc = subprocess.Popen(
            prefix + [sys.executable, "-c", script] + [str(a) for a in args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stdout.close()


def _marks(proc: subprocess.Popen) -> list[tuple[float, int]]:
    out, _ = proc.communicate(timeout=60)
    return [(float(t), int(n)) for t, n in (line.split() for line in out.splitlines())]


GOODPUT_SLICE_S = 0.3


def _received_by(window: list[tuple[float, int]], times: list[float], t: float) -> float:
    """Bytes received by time `t`, interpolated between the receiver's marks
    (`times`: the marks' times)."""
    i = bisect.bisect_right(times, t)
    if i == 0:
        return float(window[0][1])
    if i == len(window):
        return float(window[-1][1])
    (ta, na), (tb, nb) = window[i - 1], window[i]
    return na + (nb - na) * (t - ta) / (tb - ta)


def _goodput_bps(marks: list[tuple[float, int]], t_from: float = -math.inf) -> float:
    """The payload rate of the marks from `t_from` on: the median of its rates
    over consecutive slices of GOODPUT_SLICE_S (at least three). A shaper at
    the wrong rate moves every slice; a pause of the whole host (a VM's stolen
    time, a busy CI neighbour) moves one or two. Over the whole window, one such
    pause of 0.45 s once read a 24 Mbit/s link as 20.9 (CI, 2026-12-04),
    where 6 runs alone read 23.89-24.00."""
    window = [(t, n) for t, n in marks if t >= t_from]
    t0 = window[0][0]
    slices = int((window[-1][0] - t0) // GOODPUT_SLICE_S)
    assert slices >= 3, f"{window[-1][0] - t0:.2f} s of marks: too short to measure"
    times = [t for t, _ in window]
    edges = [_received_by(window, times, t0 + k * GOODPUT_SLICE_S) for k in range(slices + 1)]
    return statistics.median((b - a) * 8 / GOODPUT_SLICE_S for a, b in itertools.pairwise(edges))


def test_goodput_is_the_median_rate_of_its_slices() -> None:
    # 8 Mbit/s in 10 ms receives for 3 s; then the same flow with a 0.45 s pause.
    steady = [(k * 0.01, k * 10_000) for k in range(301)]
    assert _goodput_bps(steady) == pytest.approx(8e6, rel=1e-9)
    paused = [(t + (0.45 if t > 1.0 else 0.0), n) for t, n in steady]
    whole = (paused[-1][1] - paused[0][1]) * 8 / (paused[-1][0] - paused[0][0])
    assert whole < 0.9 * 8e6  # what the whole window read
    assert _goodput_bps(paused) == pytest.approx(8e6, rel=1e-9)
    # A link at the wrong rate moves every slice.
    slow = [(t, int(n * 0.8)) for t, n in steady]
    assert _goodput_bps(slow) == pytest.approx(6.4e6, rel=0.01)
    with pytest.raises(AssertionError, match="too short to measure"):
        _goodput_bps(steady[:80])


@pytest.fixture(scope="module")
def topology():
    run_id = _run_id("pt")
    before = project_footprint(run_id)
    assert before == EMPTY
    topo = NetnsTopology(run_id, 2, control_ports=(CONTROL_PORT,), up_bps=8e6, down_bps=8e6)
    with topo:
        _assert_run_exists(topo)
        yield topo
    assert project_footprint(run_id) == before


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.stop_all()


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_uplink_goodput_8mbit(topology, procs):
    receiver = procs.start(topology.exec_prefix("main"), RECEIVER, topology.address("main"), 5001)
    sender = procs.start(topology.exec_prefix(0), SENDER, topology.address("main"), 5001,
                         2 * 1024 * 1024)  # fmt: skip
    sender.wait(30)
    assert _goodput_bps(_marks(receiver)) == pytest.approx(8e6, rel=0.10)


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_downlink_goodput_8mbit_and_live_change(topology, procs):
    # 12 MiB: ~1.2 MB at 8 Mbit/s before the change, then ~3.5 s at 24 Mbit/s.
    # Each window spans over a second, so a loaded CI machine delaying a few
    # recv() calls cannot move the figure by 10 % (a 0.6 s window once did),
    # and _goodput_bps takes the median of its slices (a host pause once did).
    addr = topology.address(1)
    receiver = procs.start(topology.exec_prefix(1), RECEIVER, addr, 5002)
    sender = procs.start(topology.exec_prefix("main"), SENDER, addr, 5002, 12 * 1024 * 1024)
    time.sleep(1.4)
    t_change = time.monotonic()
    topology.set_client_rates(1, 8e6, 24e6)
    sender.wait(30)
    marks = _marks(receiver)
    before = [m for m in marks if m[0] < t_change]
    after = [m for m in marks if m[0] >= t_change + 0.5]
    assert after[-1][0] - after[0][0] > 2.0, "the 24 Mbit/s window is too short to measure"
    assert _goodput_bps(before, before[0][0] + 0.2) == pytest.approx(8e6, rel=0.10)
    assert _goodput_bps(after) == pytest.approx(24e6, rel=0.10)
    topology.set_client_rates(1, 8e6, 8e6)


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_control_port_skips_the_shaped_queue(topology, procs):
    fed = topology.address("fed")
    procs.start(topology.exec_prefix("main"), RECEIVER, topology.address("main"), 5003)
    procs.start(topology.exec_prefix("fed"), ECHO_SERVER, fed, CONTROL_PORT)
    procs.start(topology.exec_prefix("fed"), ECHO_SERVER, fed, 7001)
    procs.start(topology.exec_prefix(0), SENDER, topology.address("main"), 5003, 3 * 1024 * 1024)
    time.sleep(0.5)  # let the bulk flow fill the shaped queue
    rtts = {}
    for port in (CONTROL_PORT, 7001):
        echo = subprocess.run(
            topology.exec_prefix(0) + [sys.executable, "-c", ECHO_CLIENT, fed, str(port), "8"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        rtts[port] = statistics.median(float(x) for x in echo.stdout.split())
    assert rtts[CONTROL_PORT] < 0.02, rtts
    assert rtts[7001] > 5 * rtts[CONTROL_PORT], rtts


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_cleanup_restores_host_when_body_raises(exc):
    run_id = _run_id("px")
    before = project_footprint(run_id)
    assert before == EMPTY
    topo = NetnsTopology(run_id, 1, up_bps=1e6, down_bps=1e6)
    with pytest.raises(exc), topo:
        _assert_run_exists(topo)
        raise exc("boom")
    assert project_footprint(run_id) == before
    topo.cleanup()  # twice is harmless
    assert project_footprint(run_id) == before


@needs_root
@pytest.mark.root
def test_cleanup_check_ignores_unrelated_host_changes():
    """Docker starting containers mid-test (a veth pair, a namespace) and another
    run's namespace: the run's footprint is unchanged; the old whole-host
    comparison would have failed."""
    run_id, other_run, tag = _run_id("pu"), _run_id("po"), secrets.token_hex(3)
    veth, peer, other_ns = f"zzunrel{tag}a", f"zzunrel{tag}b", f"zzunrel{tag}"
    other_run_ns = f"{run_prefix(other_run)}br"
    made_links: list[str] = []
    made_netns: list[str] = []
    whole_before = _whole_host()
    before = project_footprint(run_id)
    try:
        with NetnsTopology(run_id, 1) as topo:
            _assert_run_exists(topo)
            for ns in (other_ns, other_run_ns):
                _ip("netns", "add", ns)
                made_netns.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            made_links.append(veth)
            assert project_footprint(run_id) == Footprint(frozenset(topo.namespaces), frozenset())
        assert project_footprint(run_id) == before
        assert _whole_host() != whole_before  # what the old test compared
        assert other_run_ns in project_footprint().namespaces  # another run is not this one
    finally:
        for link in made_links:
            _ip("link", "del", link, check=False)
        for ns in made_netns:
            _ip("netns", "del", ns, check=False)
    assert veth not in _ip("-o", "link", "show")


@needs_root
@pytest.mark.root
def test_footprint_catches_a_link_left_on_the_host():
    """The comparison can fail: a host link named with the run's prefix survives
    cleanup, and one whose peer sits in the run's namespace is the run's too."""
    run_id, tag = _run_id("pl"), secrets.token_hex(3)
    named, named_peer, leaked = f"{run_prefix(run_id)}x", f"zzleak{tag}b", f"zzleak{tag}a"
    made: list[str] = []
    before = project_footprint(run_id)
    try:
        with NetnsTopology(run_id, 1) as topo:
            _ip("link", "add", named, "type", "veth", "peer", "name", named_peer)
            made.append(named)
            _ip("link", "add", leaked, "type", "veth", "peer", "name", "leak0", "netns",
                topo.netns("br"))  # fmt: skip
            made.append(leaked)
            assert project_footprint(run_id).links == {named, leaked}
        # Deleting the bridge namespace took `leaked` with its peer; `named` stays.
        assert project_footprint(run_id) == Footprint(frozenset(), frozenset({named}))
        assert project_footprint(run_id) != before
    finally:
        for link in made:
            _ip("link", "del", link, check=False)
    assert project_footprint(run_id) == before
