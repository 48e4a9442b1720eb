"""Tests for fedsllm/link/token.py and the `paced` helper of base.py."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

from fedsllm.errors import LinkError
from fedsllm.link.base import Direction, paced
from fedsllm.link.token import TokenShaper

UP, DOWN = Direction.UP, Direction.DOWN


class FakeClock:
    """A clock that only moves when told; `sleep` advances it unless frozen."""

    def __init__(self, advance_on_sleep: bool = True) -> None:
        self.now = 0.0
        self.advance_on_sleep = advance_on_sleep
        self.sleeps: list[float] = []
        self.on_sleep: list = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.advance_on_sleep:
            self.now += seconds
        for hook in self.on_sleep:
            hook()


def make(fake: FakeClock, **kwargs) -> TokenShaper:
    return TokenShaper(clock=fake.clock, sleep=fake.sleep, **kwargs)


@pytest.mark.parametrize(
    "rate_bps,chunk_bytes,num_chunks",
    [
        (1e6, 16 * 1024, 4),
        (8e6, 256 * 1024, 8),
        (50e6, 1024 * 1024, 3),
        (100e6, 64 * 1024, 16),
        (1e6, 1000, 1),
    ],
)
def test_transfer_takes_bytes_times_8_over_rate(rate_bps, chunk_bytes, num_chunks):
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(0, rate_bps, math.inf)
    for _ in range(num_chunks):
        shaper.pace(0, UP, chunk_bytes)
    assert fake.now == pytest.approx(num_chunks * chunk_bytes * 8 / rate_bps, rel=1e-12)


def test_each_chunk_waits_before_it_is_released():
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(0, 8e6, 8e6)
    shaper.pace(0, UP, 100_000)  # 0.1 s
    assert fake.sleeps == [pytest.approx(0.1)]
    assert fake.now == pytest.approx(0.1)


def test_rate_change_takes_effect_at_next_chunk():
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(0, 8e6, 8e6)
    changed = []

    def change_once() -> None:
        # Arrives while the first chunk is in flight (inside its sleep).
        if not changed:
            shaper.set_rates(0, 16e6, 8e6)
            changed.append(True)

    fake.on_sleep.append(change_once)
    shaper.pace(0, UP, 1_000_000)  # scheduled at 8 Mbit/s: 1.0 s
    assert fake.now == pytest.approx(1.0)
    shaper.pace(0, UP, 1_000_000)  # new rate: 0.5 s
    assert fake.now == pytest.approx(1.5)
    assert shaper.rates(0) == (16e6, 8e6)


def test_directions_and_clients_are_independent():
    fake = FakeClock(advance_on_sleep=False)  # all calls happen at t=0
    shaper = make(fake)
    shaper.set_rates(0, 8e6, 4e6)
    shaper.set_rates(1, 2e6, 8e6)
    shaper.pace(0, UP, 1_000_000)
    shaper.pace(0, DOWN, 1_000_000)
    shaper.pace(1, UP, 1_000_000)
    shaper.pace(1, DOWN, 1_000_000)
    # Each link started at t=0; none queued behind another.
    assert fake.sleeps == pytest.approx([1.0, 2.0, 4.0, 1.0])
    # A second chunk on one link queues behind that link only.
    shaper.pace(0, UP, 1_000_000)
    assert fake.sleeps[-1] == pytest.approx(2.0)
    assert shaper.next_idle(0, DOWN) == pytest.approx(2.0)


def test_no_burst_credit_after_idle():
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(0, 8e6, 8e6)
    shaper.pace(0, UP, 1_000_000)
    fake.now += 10.0  # long idle
    shaper.pace(0, UP, 1_000_000)
    assert fake.now == pytest.approx(12.0)
    assert fake.sleeps == pytest.approx([1.0, 1.0])


def test_sender_overhead_within_continuity_is_not_lost_link_time():
    fake = FakeClock()
    shaper = make(fake, continuity_s=0.005)
    shaper.set_rates(0, 8e6, 8e6)
    shaper.pace(0, UP, 1_000_000)  # ends at 1.0
    fake.now += 0.002  # the socket copy took 2 ms
    shaper.pace(0, UP, 1_000_000)  # continues the stream: ends at 2.0
    assert fake.now == pytest.approx(2.0)
    fake.now += 0.010  # beyond continuity: the link was idle
    shaper.pace(0, UP, 1_000_000)
    assert fake.now == pytest.approx(3.01)
    fake.now += 0.002  # a new message never continues the previous schedule
    shaper.pace(0, UP, 1_000_000, new_message=True)
    assert fake.now == pytest.approx(4.012)


def test_unshaped_rates_never_sleep():
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(0, 0, math.inf)
    shaper.pace(0, UP, 10**9)
    shaper.pace(0, DOWN, 10**9)
    shaper.pace(5, UP, 10**9)  # never set: unshaped
    assert fake.sleeps == []
    assert shaper.rates(0) == (math.inf, math.inf)


def test_time_dilation_stretches_and_stats_divide_it_out():
    fake = FakeClock()
    shaper = make(fake, time_dilation=3.0, propagation_delay_s=0.01)
    shaper.set_rates(0, 8e6, 8e6)
    shaper.pace(0, UP, 500_000, new_message=True)
    shaper.pace(0, UP, 500_000)
    assert fake.now == pytest.approx(3.0 * (1.0 + 0.01))
    st = shaper.stats()[(0, UP)]
    assert st.num_bytes == 1_000_000
    assert st.num_chunks == 2
    # Busy time is transmission only (the delay is not link occupancy).
    assert st.busy_s == pytest.approx(1.0)
    assert st.achieved_bps == pytest.approx(8e6)


def test_propagation_delay_once_per_message():
    fake = FakeClock()
    shaper = make(fake, propagation_delay_s=0.05)
    shaper.set_rates(0, 8e6, math.inf)
    list(paced([b"x" * 100_000] * 3, shaper, 0, UP))
    assert fake.now == pytest.approx(0.05 + 0.3)
    # An unshaped direction still pays the delay.
    list(paced([b"y" * 100_000] * 3, shaper, 0, DOWN))
    assert fake.now == pytest.approx(0.05 + 0.3 + 0.05)


def test_paced_yields_each_chunk_only_after_its_transmission():
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(2, math.inf, 8e6)
    chunks = [b"a" * 10_000, b"b" * 30_000, b"c" * 60_000]
    seen = []
    for chunk in paced(chunks, shaper, 2, DOWN):
        seen.append((chunk[:1], fake.now))
    assert [c for c, _ in seen] == [b"a", b"b", b"c"]
    assert [t for _, t in seen] == pytest.approx([0.01, 0.04, 0.10])


def test_paced_uses_size_of():
    fake = FakeClock()
    shaper = make(fake)
    shaper.set_rates(0, 8e6, 8e6)
    out = list(paced([("meta", 250_000)], shaper, 0, UP, size_of=lambda c: c[1]))
    assert out == [("meta", 250_000)]
    assert fake.now == pytest.approx(0.25)


def test_threads_share_one_link_without_overlap():
    fake = FakeClock(advance_on_sleep=False)
    shaper = make(fake)
    shaper.set_rates(0, 8e6, 8e6)
    threads = [
        threading.Thread(target=lambda: [shaper.pace(0, UP, 10_000) for _ in range(50)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 chunks of 10 kB at 8 Mbit/s: the link is booked back to back to 2.0 s.
    assert shaper.next_idle(0, UP) == pytest.approx(2.0)
    assert sorted(fake.sleeps)[-1] == pytest.approx(2.0)
    assert shaper.stats()[(0, UP)].num_bytes == 2_000_000


@pytest.mark.parametrize("up,down", [(-1.0, 1e6), (1e6, math.nan), ("fast", 1e6), (1e6, None)])
def test_bad_rate_raises_and_changes_nothing(up, down):
    shaper = make(FakeClock())
    shaper.set_rates(0, 1e6, 2e6)
    with pytest.raises(LinkError, match="bps"):
        shaper.set_rates(0, up, down)
    assert shaper.rates(0) == (1e6, 2e6)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.pace(-1, UP, 10),
        lambda s: s.pace(0, "up", 10),
        lambda s: s.pace(0, UP, -5),
        lambda s: s.set_rates(True, 1e6, 1e6),
        lambda s: TokenShaper(time_dilation=0),
        lambda s: TokenShaper(propagation_delay_s=-1),
    ],
)
def test_bad_arguments_raise_link_error(call):
    with pytest.raises(LinkError):
        call(make(FakeClock()))


# ----------------------------------------------------------------- real time


def _send_through_socket(rate_bps: float, total_bytes: int, chunk_bytes: int) -> float:
    """Send paced chunks over a real loopback TCP socket; seconds until the
    receiver holds every byte."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    done = threading.Event()
    received = [0]

    def receive() -> None:
        conn, _ = srv.accept()
        with conn:
            while received[0] < total_bytes:
                data = conn.recv(1 << 20)
                if not data:
                    break
                received[0] += len(data)
        done.set()

    receiver = threading.Thread(target=receive)
    receiver.start()
    shaper = TokenShaper()
    shaper.set_rates(0, rate_bps, math.inf)
    payload = b"\0" * chunk_bytes
    chunks = [payload] * (total_bytes // chunk_bytes)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.monotonic()
        for chunk in paced(chunks, shaper, 0, UP):
            sock.sendall(chunk)
        done.wait(30)
        elapsed = time.monotonic() - t0
    receiver.join(5)
    srv.close()
    assert received[0] == total_bytes
    return elapsed


@pytest.mark.slow
@pytest.mark.parametrize(
    "rate_bps,total_bytes",
    [(8e6, 256 * 1024), (8e6, 2 * 1024 * 1024), (40e6, 1024 * 1024), (40e6, 2 * 1024 * 1024)],
)
def test_real_socket_transfer_is_paced_at_the_rate(rate_bps, total_bytes):
    """Over a real socket every chunk waits its own transmission time before it
    goes (no burst credit), so the payload can never arrive sooner than at the
    rate; the upper bound only catches a stalled pacer. How
    close to the rate it comes is a figure of benchmarks/link_accuracy.py, not
    a bound here (FACTS: within 0.6% from 1 to 100 Mbit/s)."""
    elapsed = _send_through_socket(rate_bps, total_bytes, 64 * 1024)
    expected = total_bytes * 8 / rate_bps
    assert expected - 1e-3 <= elapsed  # 1 ms: clock reads
    assert elapsed < expected + 5.0  # paced, not stalled (seconds of slack for a loaded host)
