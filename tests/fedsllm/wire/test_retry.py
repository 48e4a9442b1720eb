from __future__ import annotations

import itertools

import pytest

from fedsllm.errors import ConfigError
from fedsllm.wire.retry import backoff_delays, keepalive_problems, link_timeout_s


def _take(n: int, **kw) -> list[float]:
    return list(itertools.islice(backoff_delays(**kw), n))


def test_no_jitter_doubles_up_to_the_cap() -> None:
    assert _take(7, base_s=0.1, cap_s=2.0, jitter=0.0) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


@pytest.mark.parametrize("jitter", [0.25, 0.5, 1.0])
def test_jitter_shortens_within_bounds(jitter: float) -> None:
    plain = _take(40, base_s=0.5, cap_s=8.0, jitter=0.0)
    jittered = _take(40, base_s=0.5, cap_s=8.0, jitter=jitter, seed=3)
    for d, j in zip(plain, jittered, strict=True):
        assert d * (1 - jitter) <= j <= d
    assert jittered != plain


def test_same_seed_same_delays_other_seed_other_delays() -> None:
    a = _take(10, base_s=1.0, cap_s=30.0, jitter=0.5, seed=7)
    assert a == _take(10, base_s=1.0, cap_s=30.0, jitter=0.5, seed=7)
    assert a != _take(10, base_s=1.0, cap_s=30.0, jitter=0.5, seed=8)


def test_endless() -> None:
    delays = backoff_delays(0.01, 0.02, 0.0)
    assert sum(1 for _ in itertools.islice(delays, 10_000)) == 10_000


@pytest.mark.parametrize(
    ("kw", "path"),
    [
        ({"base_s": 0.0, "cap_s": 1.0}, "retry.base_s"),
        ({"base_s": float("nan"), "cap_s": 1.0}, "retry.base_s"),
        ({"base_s": 2.0, "cap_s": 1.0}, "retry.cap_s"),
        ({"base_s": 1.0, "cap_s": float("inf")}, "retry.cap_s"),
        ({"base_s": 1.0, "cap_s": 2.0, "jitter": 1.5}, "retry.jitter"),
        ({"base_s": 1.0, "cap_s": 2.0, "jitter": -0.1}, "retry.jitter"),
    ],
)
def test_bad_backoff_settings(kw: dict, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        next(backoff_delays(**kw))
    assert info.value.path == path


@pytest.mark.parametrize(
    ("payload_bytes", "rate_bps", "floor_s", "factor", "expected"),
    [
        (1_000_000, 8e6, 10.0, 3.0, 10.0),  # 1 s transfer, x3 = 3 s < floor
        (10_000_000, 1e6, 10.0, 3.0, 240.0),  # 80 s transfer on a slow link, x3
        (10_000_000, None, 10.0, 3.0, 10.0),  # unshaped
        (10_000_000, 0.0, 5.0, 3.0, 5.0),  # rate 0 means unshaped too
        (0, 1e3, 2.0, 1.0, 2.0),
    ],
)
def test_link_timeout(payload_bytes, rate_bps, floor_s, factor, expected) -> None:
    assert link_timeout_s(payload_bytes, rate_bps, floor_s, factor) == pytest.approx(expected)


def test_link_timeout_scales_with_the_rate() -> None:
    slow = link_timeout_s(50_000_000, 1e6)
    fast = link_timeout_s(50_000_000, 1e7)
    assert slow == pytest.approx(10 * fast)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ((-1, 1e6, 1.0, 1.0), "payload_bytes"),
        ((1, 1e6, 0.0, 1.0), "timeout.floor_s"),
        ((1, 1e6, 1.0, 0.5), "timeout.factor"),
    ],
)
def test_bad_link_timeout_settings(args: tuple, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        link_timeout_s(*args)
    assert info.value.path == path


def test_keepalive_agreement() -> None:
    client = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_permit_without_calls", 1)]
    good = {
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 1,
    }
    assert keepalive_problems(client, good) == []
    # gRPC's server default (5 min) refuses a 20 s ping as too many pings
    problems = keepalive_problems(client, {})
    assert len(problems) == 2 and "too_many_pings" in problems[0]
    assert keepalive_problems({}, {}) == []


def test_the_projects_own_options_agree() -> None:
    from fedsllm.wire import rpc

    assert keepalive_problems(rpc.CHANNEL_OPTIONS, rpc.SERVER_OPTIONS) == []


def test_the_servers_ping_floor_is_one_grpc_reads() -> None:
    # A waiting call with keepalive pings every second survives a server built from
    # SERVER_OPTIONS with its ping floor scaled to 0.5 s. Under a name gRPC ignores
    # ("min_recv_..."), the 5 min default struck the pings and cut the call with
    # GOAWAY too_many_pings: at K = 100, every idle allocation stream after ~2 min.
    import time
    from concurrent import futures

    import grpc

    from fedsllm.wire import rpc

    def scaled(key: str, value: int) -> int:
        return 500 if "ping_interval" in key else value

    options = [(k, scaled(k, v)) for k, v in rpc.SERVER_OPTIONS if k != "grpc.so_reuseport"]
    server = grpc.server(futures.ThreadPoolExecutor(2), options=options)
    wait = grpc.unary_unary_rpc_method_handler(lambda req, ctx: time.sleep(7) or b"ok")
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {"W": wait})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = [(k, 1000 if k == "grpc.keepalive_time_ms" else v) for k, v in rpc.CHANNEL_OPTIONS]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=client) as channel:
            assert channel.unary_unary("/t.T/W")(b"", timeout=20) == b"ok"
    finally:
        server.stop(0)
