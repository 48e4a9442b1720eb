"""benchmarks/wire_aio.py's AioClient: the project's wire code on a grpc.aio
stream, against the sync benchmark server's Train, returns what was sent (the
benchmark times it against the sync client, so a client that read the reply
wrongly would make its figure meaningless)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch


@pytest.fixture(scope="module")
def aio(benchmark_script):
    benchmark_script("wire_throughput")  # what wire_aio imports
    return benchmark_script("wire_aio")


@pytest.mark.slow
def test_the_aio_client_echoes_bit_exact_and_reads_an_eval_result(aio) -> None:
    wt = aio.wt
    server = wt._start_server()
    acts = torch.randn(2, 8, 40_000)  # 2.56 MB: ten 256 KiB chunks and a part
    mask = torch.ones(2, 8, dtype=torch.int64)
    labels = torch.arange(16).reshape(2, 8)

    async def steps() -> list[torch.Tensor | None]:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bench_port}")
        try:
            client = await aio.AioClient.open(channel)
            got = [
                await client.run_step((acts, mask, labels), "train"),
                await client.run_step((acts, mask, labels), "eval"),
                await client.run_step((2 * acts, mask, labels), "train"),
            ]
            await client.close()
            return got
        finally:
            await channel.close()

    try:
        first, evaluated, second = asyncio.run(steps())
    finally:
        wt.rpc.stop_server(server, 0.5)
    assert first is not None and torch.equal(first, acts)
    assert evaluated is None  # answered by its result alone
    assert second is not None and torch.equal(second, 2 * acts)
