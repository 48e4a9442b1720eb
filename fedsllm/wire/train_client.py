"""The client's end of the Train stream, on grpc.aio, driven from synchronous code.

Why grpc.aio. gRPC-Python's sync client hands every message of a stream to
a sending thread of its own and every reply from its polling thread back to
the caller, the GIL changing hands at each. On grpc.aio the step's writes and
its reads run on the caller's one thread. benchmarks/wire_aio.py measured
the project's own wire code both ways against the same sync server (issue
13): on grpc.aio the 1.57 MB echo took 0.90-0.95 of the sync client's time,
and the 1.57 MB upload ran at 0.95-1.02 of raw gRPC's rate, against
0.90-0.94 for the sync client in the same runs.

Why a private event loop that runs only inside `open`, `send`, `receive`
and `finish`. The client's training loop (client/loop.py) is synchronous:
its compute runs between steps, and it waits on the wire only while a step
goes out and its reply comes in. Running the loop then, and at no other time,
adds no thread and puts nothing of the client's compute on the loop. What
gRPC's poller hears meanwhile (a reply, the end of a call) waits in the loop's
queue until it runs again.

A call that has ended (the server went away, or refused the step) is
reported by `receive`, not by `send`: writing to it stops quietly, and the
next read raises the call's status, as a sync call's iterator raises it.
That is where MainServerStream (client/remote.py) reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from fedsllm.errors import WireError
from fedsllm.wire.messages import TrainHelloInfo, TrainWelcomeInfo
from fedsllm.wire.rpc import Security, make_aio_channel
from fedsllm.wire.tensors import TensorSpec
from fedsllm.wire.train import (
    TRAIN_METHOD,
    DownlinkReader,
    StepDownload,
    StepResultInfo,
    decode_train_response,
    encode_train_request,
)

log = logging.getLogger(__name__)

Pace = Callable[[int, bool], None]
"""pace(nbytes, new_message): blocks until the emulated link has carried nbytes;
new_message marks the first message of a transfer (charged the propagation delay)."""


class AioLink:
    """A grpc.aio channel to one server, and the private event loop that runs
    its calls (see the module docstring). Not thread-safe: one caller."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.channel: grpc.aio.Channel = self.run(self._make(address, security))

    @staticmethod
    async def _make(address: str, security: Security | None) -> grpc.aio.Channel:
        # Inside the loop: a grpc.aio channel binds to the loop it is made in.
        return make_aio_channel(address, security)

    def run(self, coro: Any) -> Any:
        """Run `coro` on this link's loop until it is done; its result or error.
        An exception that stops the loop from outside the coroutine (a
        KeyboardInterrupt from a signal while the loop waits) cancels the
        coroutine before it propagates, so no read or write is left pending
        on the call (grpc.aio cancels the call with it)."""
        task = self.loop.create_task(coro)
        try:
            return self.loop.run_until_complete(task)
        except BaseException:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    self.loop.run_until_complete(task)
            raise

    def close(self) -> None:
        """Close the channel (cancelling its calls) and the loop; idempotent."""
        if self.loop.is_closed():
            return
        try:
            self.run(self.channel.close())
        finally:
            # What the calls left running (gRPC's wait for each call's status)
            # is given a moment to end on this loop, the rest cancelled and run
            # to its end: a loop closed with events still due to it makes gRPC's
            # poller, shared by every loop, hand them to a closed loop
            # ("Event loop is closed", logged on another link's loop).
            self.run(_end_the_rest(CLOSE_GRACE_S))
            self.loop.close()


CLOSE_GRACE_S = 1.0
"""How long AioLink.close waits for its calls' last events before cancelling."""


async def _end_the_rest(grace_s: float) -> None:
    """Wait up to `grace_s` for every other task of the running loop to end,
    then cancel what is left and wait for that."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if not rest:
        return
    _, pending = await asyncio.wait(rest, timeout=grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


_CALL_ENDED = (grpc.aio.AioRpcError, asyncio.InvalidStateError)
"""What writing to a call that has ended raises: its status (the write saw it
end), or InvalidStateError (it had ended before)."""

LOST_STATUS = (grpc.StatusCode.INTERNAL, "Internal error from Core")
"""The status grpc.aio gives a call whose write failed because the call had
ended in gRPC core, in place of the status the call really ended with
(grpc/aio/_call.py, `_write`: set_internal_error; grpc/grpc#36066): the
UNAVAILABLE of a transport that went away (the reconnect's cue), or the
code a server refused the step with. Which one the caller sees depends on
the order the loop takes the two events in: core's status first, then the
failed write, and the status is overwritten; the other way round, and
core's status overwrites the lost one a moment later."""

STATUS_SETTLE_S = 5.0
"""How long a call left with LOST_STATUS is given to learn core's own."""


def _status_now(call: grpc.aio.Call) -> grpc.aio.AioRpcError:
    """The status of a call that has ended, as the error a read would raise.
    Its code(), details() and metadata coroutines return without waiting once
    the status is in, so each is run by hand, here and now (in a done
    callback: before anything can overwrite it)."""

    def now(coro: Any) -> Any:
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        coro.close()
        raise RuntimeError("the call's status is not in yet")

    return grpc.aio.AioRpcError(
        now(call.code()),
        now(call.initial_metadata()),
        now(call.trailing_metadata()),
        now(call.details()),
        now(call.debug_error_string()),
    )


def _is_lost(err: grpc.aio.AioRpcError) -> bool:
    return (err.code(), err.details()) == LOST_STATUS


class TrainCall:
    """One Train call on an AioLink: the hello and its welcome (`open`), then
    steps (`send`, `receive`), then the end (`finish`, or `cancel`).

    `method`, the (de)serializers and `metadata` are the Train method's
    unless given (a benchmark may point the same code at another method)."""

    def __init__(
        self,
        link: AioLink,
        reply_specs: Callable[[StepResultInfo], Iterable[TensorSpec]],
        *,
        metadata: Sequence[tuple[str, str]] = (),
        method: str = TRAIN_METHOD,
        request_serializer: Callable[[Any], bytes] = encode_train_request,
        response_deserializer: Callable[[bytes], Any] = decode_train_response,
        timeout_s: float | None = None,
    ) -> None:
        self._link = link
        self._reader = DownlinkReader(reply_specs)
        multicallable = link.channel.stream_stream(
            method,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )

        async def start() -> grpc.aio.StreamStreamCall:
            # Made inside the loop, which the call binds to.
            return multicallable(metadata=tuple(metadata) or None, timeout=timeout_s)

        self._call: grpc.aio.StreamStreamCall = link.run(start())
        self._first_status: grpc.aio.AioRpcError | None = None
        """The status the call ended with first (LOST_STATUS may replace it)."""
        self._ended: grpc.aio.AioRpcError | None = None
        """A write failed: the status the call really ended with, which
        receive reports in place of what the call now says (OK: the stream's
        end; any other code: raised)."""
        self._call.add_done_callback(self._on_done)

    def _on_done(self, call: grpc.aio.Call) -> None:
        # Runs inside gRPC's own status handling: nothing may escape from here.
        if self._first_status is None:
            try:
                self._first_status = _status_now(call)
            except Exception:  # noqa: BLE001 - then the status the call keeps is used
                log.exception("could not read a Train call's status as it ended")

    def open(self, hello: TrainHelloInfo) -> TrainWelcomeInfo:
        """Say hello; return the welcome. The call's status (a grpc.RpcError) if
        it ended instead, WireError if it answered with anything else."""
        return self._link.run(self._open(hello))

    async def _open(self, hello: TrainHelloInfo) -> TrainWelcomeInfo:
        if not await self._write_all((hello,), None):
            if self._ended is not None and self._ended.code() != grpc.StatusCode.OK:
                raise self._ended
            raise WireError("TrainResponse", "main server ended the call before its welcome")
        msg = await self._read()
        if msg is grpc.aio.EOF:
            raise WireError("TrainResponse", "main server did not answer hello with welcome")
        return self._reader.feed(msg)  # type: ignore[return-value]  # the first: a welcome or raises

    def send(
        self, requests: Sequence[Any], sizes: Sequence[int] | None = None, pace: Pace | None = None
    ) -> bool:
        """Write a step's messages in order; with `pace`, each only once
        pace(size, first) lets it go (`sizes`: each message's bytes). Returns
        once gRPC has taken the last, so the tensors the messages view may
        change after that. False when the call had ended (nothing more is
        written; `receive` reports how: its status raised, or None for a
        server that ended it cleanly)."""
        return self._link.run(self._write_all(requests, None if pace is None else (pace, sizes)))

    async def _write_all(
        self, requests: Sequence[Any], paced: tuple[Pace, Sequence[int] | None] | None
    ) -> bool:
        if self._call.cancelled():
            return False  # receive says so (_read)
        write = self._call.write
        try:
            if paced is None:
                for request in requests:
                    await write(request)
            else:
                await self._write_paced(requests, *paced)
        except _CALL_ENDED as err:
            log.debug("Train call ended while writing: %s", err)
            self._ended = await self._real_status()
            return False
        return True

    async def _write_paced(
        self, requests: Sequence[Any], pace: Pace, sizes: Sequence[int] | None
    ) -> None:
        """Each message written once pace(size, first) lets it go. The next
        message's pacing runs while the last one's write is in flight (gRPC
        takes one write at a time), as it ran beside gRPC's sending thread on
        the sync API: the emulated link's clock does not count a slow write
        (a full flow-control window) as idle time."""
        if sizes is None or len(sizes) != len(requests):
            raise ValueError("pacing needs one size per message")
        in_flight: asyncio.Future[None] | None = None
        try:
            for i, request in enumerate(requests):
                pace(sizes[i], i == 0)  # blocks the loop; gRPC core sends meanwhile
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(self._call.write(request))
                await asyncio.sleep(0)  # the write starts: its message goes to gRPC core
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()

    async def _real_status(self) -> grpc.aio.AioRpcError:
        """After a failed write: the status the call really ended with. The
        first it had, unless that is LOST_STATUS; else the loop runs until
        core's own replaces it (at most STATUS_SETTLE_S)."""
        if self._first_status is not None and not _is_lost(self._first_status):
            return self._first_status
        deadline = self._link.loop.time() + STATUS_SETTLE_S
        while True:
            await self._call.code()  # waits for a status, if none yet
            status = _status_now(self._call)
            if not _is_lost(status):
                return status
            if self._link.loop.time() >= deadline:
                log.warning("a Train call ended while writing; its status never came")
                return status
            await asyncio.sleep(0.001)

    def receive(self) -> StepDownload | None:
        """The next step's reply, once all of it is in; None when the server
        ended the stream cleanly. The call's status (a grpc.RpcError) if it
        failed; WireError for a malformed reply or one cut off inside."""
        return self._link.run(self._receive())

    async def _read(self) -> Any:
        """The call's next message, EOF, or its status raised. grpc.aio hands
        over None for a message the deserializer could not decode (it logs
        the error): the call is cancelled and that is a WireError."""
        msg = await self._call.read()
        if msg is None:
            self._call.cancel()
            raise WireError("TrainResponse", "a message the Train codec could not decode")
        return msg

    async def _receive(self) -> StepDownload | None:
        if self._ended is not None:
            if self._ended.code() != grpc.StatusCode.OK:
                raise self._ended
            self._reader.end()
            return None
        if self._call.cancelled():
            # cancel(), or a read an interrupt left: CANCELLED, raised as a status
            # as the sync API raised it (grpc.aio raises asyncio.CancelledError
            # for it, which would read as this task's own).
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "the Train call was cancelled on this side",
            )
        read, feed = self._read, self._reader.feed
        while True:
            msg = await read()
            if msg is grpc.aio.EOF:
                self._reader.end()
                return None
            item = feed(msg)
            if item is not None:
                return item  # a StepDownload: feed answers the welcome only first

    def finish(self) -> None:
        """End the uplink and read the call to its end: nothing more was
        expected, so a reply is a WireError; a failed call raises its status."""
        self._link.run(self._finish())

    async def _finish(self) -> None:
        if self._ended is None and not self._call.done():
            try:
                await self._call.done_writing()
            except Exception as err:  # noqa: BLE001 - the call ended meanwhile
                log.debug("Train call ended before its uplink: %s", err)  # its status: below
        if await self._receive() is not None:
            raise WireError("TrainResponse", "a reply after the last step")

    def cancel(self) -> None:
        """Let go of the call (a broken one, or one being abandoned)."""

        async def cancel() -> None:
            self._call.cancel()

        self._link.run(cancel())
