"""The in-container helpers: when the servers stop, and the tc commands a
`--links tc` client runs on its own interface."""

from __future__ import annotations

import math

import pytest

from fedsllm.deploy import links
from fedsllm.deploy.supervise import parse_args, wait_until_done
from fedsllm.errors import LinkError


def test_servers_stop_only_once_finished_and_every_client_gone() -> None:
    ticks = []
    gone_after = {"client-0": 3, "client-1": 5}

    def resolve(name: str) -> bool:
        return len(ticks) < gone_after[name]

    done = wait_until_done(
        "fed:1",
        list(gone_after),
        lambda: True,
        finished=lambda _a: len(ticks) >= 2,
        resolve=resolve,
        sleep=lambda _s: ticks.append(1),
    )
    assert done is True
    assert len(ticks) == 5


def test_a_role_that_exits_by_itself_is_not_waited_for() -> None:
    assert wait_until_done("fed:1", ["c"], lambda: False, finished=lambda _a: True) is False


def test_arguments() -> None:
    args = parse_args(["--stop-when-done", "fed:1", "--clients", "a,b", "--", "python", "-m", "x"])
    assert args.command == ["python", "-m", "x"]
    with pytest.raises(SystemExit):
        parse_args(["--stop-when-done", "fed:1", "--", "python"])


def test_tc_setup_shapes_egress_and_ingress_through_ifb() -> None:
    cmds = [" ".join(c) for c in links.setup_cmds()]
    assert "ip link add ifb0 type ifb" in cmds
    assert any("ingress" in c and "dev eth0" in c for c in cmds)
    assert any("mirred egress redirect dev ifb0" in c for c in cmds)
    for dev in ("eth0", "ifb0"):
        assert any(c.startswith(f"tc qdisc add dev {dev} root handle 1: htb") for c in cmds)
        assert any(f"dev {dev}" in c and "sport 50053" in c for c in cmds)


def test_interface_topology_changes_both_classes_live() -> None:
    seen = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    topo = links.InterfaceTopology(2, runner=lambda cmd, **_: seen.append(cmd) or Done())
    topo.set_client_rates(1, 1e6, 2e6)
    assert [c[:6] for c in seen] == [
        ["tc", "class", "change", "dev", d, "parent"] for d in ("eth0", "ifb0")
    ]
    assert topo.client_rates(1) == (1e6, 2e6)
    assert topo.client_rates(0) == (math.inf, math.inf)
    with pytest.raises(LinkError):
        topo.client_rates(2)


def test_setup_without_net_admin_names_it() -> None:
    class Refused:
        returncode, stdout, stderr = 2, "", "RTNETLINK answers: Operation not permitted"

    with pytest.raises(LinkError, match="NET_ADMIN"):
        links.setup(runner=lambda cmd, **_: Refused())
