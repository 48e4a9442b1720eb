"""Tests for fedsllm/link/tc.py: exact command lists (no root needed) and run_cmds."""

from __future__ import annotations

import math
import subprocess

import pytest

from fedsllm.errors import LinkError
from fedsllm.link import tc


@pytest.mark.parametrize(
    "rate_bps,expected",
    [
        (8e6, round(8e6 * 1514 / 1448)),
        (1e6, 1_045_580),
        (tc.MIN_RATE_BPS, round(tc.MIN_RATE_BPS * 1514 / 1448)),
        (0, tc.UNSHAPED_RATE_BPS),
        (math.inf, tc.UNSHAPED_RATE_BPS),
    ],
)
def test_tc_rate_scales_for_headers(rate_bps, expected):
    assert tc.tc_rate_bps(rate_bps) == expected


@pytest.mark.parametrize("rate_bps", [-1.0, math.nan, 100.0, 7_999.0, 41e9, "8mbit"])
def test_out_of_range_rate_raises(rate_bps):
    with pytest.raises(LinkError, match="rate_bps"):
        tc.tc_rate_bps(rate_bps)
    with pytest.raises(LinkError):
        tc.htb_change_cmd("eth0", "1:20", rate_bps)


def test_htb_root_cmds():
    assert tc.htb_root_cmds("eth0", netns="fsl-x-c0") == [
        ["tc", "-n", "fsl-x-c0", "qdisc", "add", "dev", "eth0", "root", "handle", "1:",
         "htb", "default", "20"]
    ]  # fmt: skip
    assert tc.htb_root_cmds("veth1")[0][:2] == ["tc", "qdisc"]


def test_htb_class_and_change_cmds():
    rate = str(round(8e6 * 1514 / 1448))
    tail = ["dev", "p-c0", "parent", "1:", "classid", "1:20", "htb", "rate", rate + "bit",
            "ceil", rate + "bit", "prio", "1", "quantum", "1514"]  # fmt: skip
    assert tc.htb_class_cmds("p-c0", "1:20", 8e6, netns="fsl-x-br") == [
        ["tc", "-n", "fsl-x-br", "class", "add"] + tail
    ]
    assert tc.htb_change_cmd("p-c0", "1:20", 8e6, netns="fsl-x-br") == (
        ["tc", "-n", "fsl-x-br", "class", "change"] + tail
    )


def test_port_filter_cmds_match_both_ports():
    cmds = tc.port_filter_cmds("eth0", [7000], "1:10")
    assert cmds == [
        ["tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "dport", "7000", "0xffff", "flowid", "1:10"],
        ["tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "sport", "7000", "0xffff", "flowid", "1:10"],
    ]  # fmt: skip


@pytest.mark.parametrize("port", [0, 70000, "7000", True])
def test_bad_port_raises(port):
    with pytest.raises(LinkError, match="port"):
        tc.port_filter_cmds("eth0", [port], "1:10")


def test_shaped_egress_cmds_order_and_classes():
    cmds = tc.shaped_egress_cmds("eth0", 4e6, [7000, 7001], netns="ns")
    assert [c[3:5] for c in cmds[:3]] == [["qdisc", "add"], ["class", "add"], ["class", "add"]]
    control, shaped = cmds[1], cmds[2]
    assert control[control.index("classid") + 1] == "1:10"
    assert control[control.index("prio") + 1] == "0"
    assert control[control.index("rate") + 1] == f"{tc.UNSHAPED_RATE_BPS}bit"
    assert shaped[shaped.index("classid") + 1] == "1:20"
    assert shaped[shaped.index("rate") + 1] == f"{round(4e6 * 1514 / 1448)}bit"
    assert len(cmds) == 3 + 4  # two filters per control port
    assert all("tbf" not in c and "netem" not in c for c in cmds)


class FakeRunner:
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_at = fail_at

    def __call__(self, cmd, **kwargs):
        assert kwargs == {"capture_output": True, "text": True, "check": False}
        self.calls.append(cmd)
        rc = 2 if len(self.calls) - 1 == self.fail_at else 0
        return subprocess.CompletedProcess(
            cmd, rc, stdout=f"out{len(self.calls)}", stderr="Error: boom"
        )


def test_run_cmds_returns_stdout_in_order():
    runner = FakeRunner()
    assert tc.run_cmds([["a"], ["b"]], runner=runner) == ["out1", "out2"]
    assert runner.calls == [["a"], ["b"]]


def test_run_cmds_stops_at_first_failure_with_stderr():
    runner = FakeRunner(fail_at=1)
    with pytest.raises(LinkError, match=r"exit 2\): tc class add: Error: boom"):
        tc.run_cmds([["ip", "x"], ["tc", "class", "add"], ["never"]], runner=runner)
    assert runner.calls == [["ip", "x"], ["tc", "class", "add"]]


def test_run_cmds_missing_binary():
    with pytest.raises(LinkError, match="not found"):
        tc.run_cmds([["fedsllm-no-such-binary-xyz"]])
