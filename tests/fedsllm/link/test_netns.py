"""Tests for fedsllm/link/netns.py: command plans without root; a real
two-client topology with TCP traffic, live rate changes and exact cleanup
with root (marker `root`)."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import time

import pytest

from fedsllm.errors import LinkError
from fedsllm.link.base import Direction
from fedsllm.link.netns import NetnsTopology, TcShaper, check_privileges
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
n = 0
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    n += len(data)
    print(time.monotonic(), n, flush=True)
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


def _host_snapshot() -> tuple[str, str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True)  # fmt: skip
    return netns.stdout, links.stdout


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


def _goodput_bps(marks: list[tuple[float, int]], t_from: float = -math.inf) -> float:
    window = [(t, n) for t, n in marks if t >= t_from]
    (t0, n0), (t1, n1) = window[0], window[-1]
    return (n1 - n0) * 8 / (t1 - t0)


@pytest.fixture(scope="module")
def topology():
    before = _host_snapshot()
    with NetnsTopology("pyt", 2, control_ports=(CONTROL_PORT,), up_bps=8e6, down_bps=8e6) as t:
        yield t
    assert _host_snapshot() == before


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
    addr = topology.address(1)
    receiver = procs.start(topology.exec_prefix(1), RECEIVER, addr, 5002)
    sender = procs.start(topology.exec_prefix("main"), SENDER, addr, 5002, 4 * 1024 * 1024)
    time.sleep(1.2)
    t_change = time.monotonic()
    topology.set_client_rates(1, 8e6, 24e6)
    sender.wait(30)
    marks = _marks(receiver)
    before = [m for m in marks if m[0] < t_change]
    assert _goodput_bps(before, before[0][0] + 0.2) == pytest.approx(8e6, rel=0.10)
    assert _goodput_bps(marks, t_change + 0.3) == pytest.approx(24e6, rel=0.10)
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
    before = _host_snapshot()
    topo = NetnsTopology("pyx", 1, up_bps=1e6, down_bps=1e6)
    with pytest.raises(exc), topo:
        assert "fsl-pyx-c0" in _host_snapshot()[0]
        raise exc("boom")
    assert _host_snapshot() == before
    topo.cleanup()  # twice is harmless
    assert _host_snapshot() == before
