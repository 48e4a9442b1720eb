"""Link emulation: the `Shaper` interface, its backends, and a factory.

- base.py: `Shaper` ABC, `Direction`, `LinkStats`, `paced` (pace a chunk
  iterator before each yield).
- token.py: `TokenShaper`, in-process virtual-clock pacing (default).
- tc.py: pure tc/htb command builders and the one `run_cmds` executor.
- netns.py: `NetnsTopology` (namespaces, bridge, veths, htb per client) and
  `TcShaper` (the Shaper that drives it).
- channel.py: the wireless channel model (rates from bandwidth shares).

Everything here imports only the standard library, so roles start fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedsllm.errors import LinkError
from fedsllm.link.base import Direction, LinkStats, Shaper, paced
from fedsllm.link.netns import NetnsTopology, TcShaper
from fedsllm.link.token import TokenShaper

if TYPE_CHECKING:
    from fedsllm.config import LinkConfig

__all__ = [
    "Direction",
    "LinkStats",
    "NetnsTopology",
    "Shaper",
    "TcShaper",
    "TokenShaper",
    "build_shaper",
    "paced",
]


def build_shaper(
    link: LinkConfig,
    *,
    topology: NetnsTopology | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Shaper | None:
    """The Shaper a role should use for `link` (None for backend "none").

    The tc backend needs the run's `NetnsTopology` (entered by the launcher,
    or a never-entered handle with the same run id inside a role). `sleep`
    (token backend) replaces time.sleep for pacing: a role passes one that
    returns early when it is stopping, so pacing never holds SIGTERM up.
    """
    if link.backend == "none":
        return None
    if link.backend == "token":
        return TokenShaper(
            propagation_delay_s=link.propagation_delay_s,
            time_dilation=link.time_dilation,
            sleep=sleep,
        )
    if link.backend == "tc":
        if topology is None:
            raise LinkError("link.backend=tc needs the run's NetnsTopology (topology=None given)")
        return TcShaper(
            topology,
            propagation_delay_s=link.propagation_delay_s,
            time_dilation=link.time_dilation,
        )
    raise LinkError(f"link.backend must be none, token or tc, got {link.backend!r}")
