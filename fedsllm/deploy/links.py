"""tc on a client container's own interface (`fedsllm compose --links tc`).

Inside a container the client owns its network namespace, so it shapes both
directions of its link itself, with NET_ADMIN and nothing on the servers:
- uplink: htb on eth0's egress (everything the client sends);
- downlink: eth0's ingress redirected (mirred) to an ifb device, htb on the
  ifb's egress (everything the client receives, from the main server and the
  fed server alike).
Shaping the downlink at the client rather than in per-client classes at the
main server's egress keeps the servers unprivileged, needs no client
addresses on the servers, and also shapes the fed server's adapter downloads,
which a class on the main server would miss. The commands come from
`fedsllm.link.tc` (htb classes, control ports in an unshaped class, header
scaling); rates change live with `tc class change`, as in the netns topology.
"""

from __future__ import annotations

import math
import subprocess
import threading
from collections.abc import Sequence

from fedsllm.errors import LinkError
from fedsllm.link.base import check_client_id, check_rate
from fedsllm.link.tc import (
    SHAPED_CLASSID,
    Cmd,
    Runner,
    htb_change_cmd,
    run_cmds,
    shaped_egress_cmds,
)

DEVICE = "eth0"
IFB_DEVICE = "ifb0"
CONTROL_PORT = 50053
"""The controller's port in the compose file: its traffic (allocations,
telemetry) goes to the unshaped class in both directions."""


def setup_cmds(
    dev: str = DEVICE, ifb: str = IFB_DEVICE, control_ports: Sequence[int] = (CONTROL_PORT,)
) -> list[Cmd]:
    """Everything one client container runs once, before the client starts:
    one segment per skb (htb accounts per wire packet, see fedsllm.link.netns),
    the ifb device with eth0's ingress redirected to it, and an unshaped htb
    tree on both egresses."""
    return [
        ["ip", "link", "set", dev, "gso_max_segs", "1"],
        ["ip", "link", "add", ifb, "type", "ifb"],
        ["ip", "link", "set", ifb, "up"],
        ["tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        ["tc", "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all",
         "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
         "dev", ifb],
    ] + shaped_egress_cmds(dev, math.inf, control_ports) + shaped_egress_cmds(
        ifb, math.inf, control_ports
    )  # fmt: skip


def setup(runner: Runner = subprocess.run) -> None:
    """Run `setup_cmds`; LinkError naming NET_ADMIN when the kernel refuses."""
    try:
        run_cmds(setup_cmds(), runner=runner)
    except LinkError as err:
        raise LinkError(
            f"{err} (a --links tc client container needs cap_add [NET_ADMIN] and user root; "
            "generate the compose file with --links token to pace links in process instead)"
        ) from None


class InterfaceTopology:
    """What `TcShaper` steers inside a client container: the htb classes that
    `setup` left on eth0 (uplink) and ifb0 (downlink). Only this container's
    client has a link here; the other clients' rates stay unshaped."""

    def __init__(
        self,
        num_clients: int,
        *,
        dev: str = DEVICE,
        ifb: str = IFB_DEVICE,
        runner: Runner = subprocess.run,
    ) -> None:
        self.num_clients = num_clients
        self.dev, self.ifb = dev, ifb
        self._runner = runner
        self._lock = threading.Lock()
        self._rates = {k: (math.inf, math.inf) for k in range(num_clients)}

    def _check(self, client_id: int) -> int:
        check_client_id(client_id)
        if client_id >= self.num_clients:
            raise LinkError(f"client id must be in [0, {self.num_clients}), got {client_id}")
        return client_id

    def rate_change_cmds(self, client_id: int, up_bps: float, down_bps: float) -> list[Cmd]:
        """The two `tc class change` commands for a live rate change (pure)."""
        self._check(client_id)
        return [
            htb_change_cmd(self.dev, SHAPED_CLASSID, up_bps),
            htb_change_cmd(self.ifb, SHAPED_CLASSID, down_bps),
        ]

    def set_client_rates(self, client_id: int, up_bps: float, down_bps: float) -> None:
        cmds = self.rate_change_cmds(client_id, up_bps, down_bps)
        up, down = check_rate("up_bps", up_bps), check_rate("down_bps", down_bps)
        with self._lock:
            run_cmds(cmds, runner=self._runner)
            self._rates[client_id] = (up, down)

    def client_rates(self, client_id: int) -> tuple[float, float]:
        with self._lock:
            return self._rates[self._check(client_id)]
