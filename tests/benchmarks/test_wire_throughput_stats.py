"""The wire benchmark's paired ratio, its in-process step, its probe of what
gRPC-Python takes as a message, and how it stops its server child."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("wire_throughput")


@pytest.fixture
def served(bench):
    """The address of a benchmark server in this process (BenchServer, the raw
    echo, the sink), stopped after the test, failed or not."""
    server = bench._start_server()
    try:
        yield f"127.0.0.1:{server.bench_port}"
    finally:
        bench.rpc.stop_server(server, 0.5)


def _timing(bench, walls: list[float]):
    return bench.Timing(sorted(walls)[len(walls) // 2], 0.0, 0.0, walls)


def test_pairs_are_taken_repetition_by_repetition(bench) -> None:
    # A drift that slows both alike cancels: every pair is 1.2 apart.
    project = _timing(bench, [1.2, 2.4, 3.6, 4.8, 6.0])
    raw = _timing(bench, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert bench.paired_ratio(project, raw) == "1.20 (1.20-1.20)"


def test_the_range_is_the_interquartile_range(bench) -> None:
    raw = _timing(bench, [2.0] * 7)
    project = _timing(bench, [3.2, 2.0, 2.6, 3.0, 2.2, 2.4, 2.8])  # ratios 1.0..1.6, shuffled
    # 7 ratios: the quartiles of the exclusive method are the 2nd, 4th and 6th.
    assert bench.paired_ratio(project, raw) == "1.30 (1.10-1.50)"


def test_too_few_pairs_give_the_median_alone(bench) -> None:
    assert bench.paired_ratio(_timing(bench, [2.0, 3.0]), _timing(bench, [1.0, 1.0])) == "2.50"


def test_unequal_repetition_counts_are_refused(bench) -> None:
    with pytest.raises(ValueError):
        bench.paired_ratio(_timing(bench, [1.0, 2.0]), _timing(bench, [1.0]))


@pytest.mark.parametrize("validate", [False, True])
def test_the_in_process_echo_step_times_every_stage(bench, validate: bool) -> None:
    # The step goes through the real builders and readers (it raises when the
    # gradient read back differs from the activations sent), and every stage
    # and the copy floor's copies get a time.
    us = bench.bench_codec_step(bench.DEFAULT_CHUNK, reps=3, validate=validate)
    assert list(us) == [*bench.STEP_STAGES, "copies"]
    assert all(value > 0 for value in us.values())


def test_the_copy_floor_premise_is_checked_on_the_installed_grpcio(bench, served: str) -> None:
    # The pinned grpcio takes only bytes from a serializer; a memoryview or a
    # bytearray is refused with gRPC-Python's TypeError, which the probe reports
    # instead of raising. (A release that takes buffers fails this test: then
    # the copy floor, and the project's copy out, can go.)
    with bench.rpc.make_channel(served) as channel:
        taken = bench.message_types_taken(channel)
    assert taken["bytes"] == "taken"
    for kind in ("memoryview", "bytearray"):
        assert taken[kind].startswith("refused (TypeError:"), taken
        assert f"got {kind}" in taken[kind]


def test_the_validated_upload_is_read_with_the_main_servers_checks(bench, served: str) -> None:
    # Table (a)'s "validated" session: any width of activations is taken (the
    # uploads' sizes fit no hidden size), but a NaN is refused as the main
    # server refuses it, and so is a label out of the vocabulary; the plain
    # session's server checks neither.
    mask = bench.torch.ones(1, 2, dtype=bench.torch.int64)
    labels = bench.torch.zeros(1, 2, dtype=bench.torch.int64)
    bad_acts = bench.torch.randn(1, 2, 1000)
    bad_acts[0, 1, 7] = float("nan")
    bad_labels = bench.torch.full((1, 2), bench.VOCAB)
    sessions = []
    try:
        plain = bench.Session(served, bench.DEFAULT_CHUNK)
        sessions.append(plain)
        assert plain.run_step(bad_acts, mask, bad_labels, "eval") is None
        for acts, step_labels, field in (
            (bad_acts, labels, "activations.data: 1 non-finite value(s), first at flat index 1007"),
            (bench.torch.randn(1, 2, 1000), bad_labels, f"labels: value {bench.VOCAB}"),
            # B and T stay bound across the three: only the width is free
            (bench.torch.randn(1, 3, 1000), labels, "activations.shape[1]: =3, expected T=2"),
        ):
            checked = bench.Session(served, bench.DEFAULT_CHUNK, validate=True, any_width=True)
            sessions.append(checked)
            assert checked.run_step(bench.torch.randn(1, 2, 4096), mask, labels, "eval") is None
            with pytest.raises(bench.grpc.RpcError) as err:
                checked.run_step(acts, mask, step_labels, "eval")
            assert err.value.code() == bench.grpc.StatusCode.INVALID_ARGUMENT
            assert field in err.value.details()
    finally:
        for session in sessions:
            session.cancel()


def test_a_pinned_child_runs_every_thread_on_its_cpu(bench) -> None:
    # --pin's server: pinned before it starts a thread, so gRPC's threads, made
    # after, are on that CPU too (a thread pinned after its start would not be).
    import os

    cpu = max(os.sched_getaffinity(0))
    child, _address = bench.start_child(cpu=cpu)
    try:
        tasks = os.listdir(f"/proc/{child.pid}/task")
        assert len(tasks) > 1  # gRPC's threads besides the main one
        for task in tasks:
            assert os.sched_getaffinity(int(task)) == {cpu}, task
    finally:
        child.stdin.close()
        child.wait(10)


def test_pin_to_cpu_moves_the_threads_already_running(bench, tmp_path) -> None:
    # A worker started before the pin (as numpy's or torch's may be on import)
    # is moved too, in a child process, so pytest's own stays where it is.
    import os
    import subprocess
    import sys

    cpu = max(os.sched_getaffinity(0))
    script = tmp_path / "pin.py"
    script.write_text(
        "import os, sys, threading\n"
        f"sys.path.insert(0, {str(bench.__file__.rsplit('/', 1)[0])!r})\n"
        "import wire_throughput as wt\n"
        "stop = threading.Event()\n"
        "worker = threading.Thread(target=stop.wait)\n"
        "worker.start()\n"
        f"wt.pin_to_cpu({cpu})\n"
        "cpus = []\n"
        "for t in os.listdir('/proc/self/task'):\n"
        "    try:\n"
        "        cpus.append(tuple(os.sched_getaffinity(int(t))))\n"
        "    except ProcessLookupError:  # a short-lived thread that ended since the listing\n"
        "        pass\n"
        "stop.set()  # counted first: the worker may end as soon as it is told\n"
        "print(len(cpus), sorted(set(cpus)))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tasks, cpus = out.stdout.split(" ", 1)
    assert int(tasks) >= 2 and cpus.strip() == str([(cpu,)])


def test_pin_prefers_a_cpu_on_another_core(bench, monkeypatch) -> None:
    # CPUs 0 and 1 are hyperthreads of one core: the server gets CPU 2.
    cores = {0: ("0", "0"), 1: ("0", "0"), 2: ("0", "1")}
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    monkeypatch.setattr(bench, "_core", cores.get)
    assert bench.pinned_cpus() == (0, 2)
    cores[2] = ("0", "0")  # one core only: the next CPU, whatever it shares
    assert bench.pinned_cpus() == (0, 1)


def test_pin_needs_two_cpus(bench, monkeypatch) -> None:
    monkeypatch.setattr(bench, "_core", lambda _cpu: None)  # no topology: not this host's
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _pid: {3})
    with pytest.raises(SystemExit, match=r"--pin needs two CPUs; this process may run on \[3\]"):
        bench.pinned_cpus()
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _pid: {5, 2, 7})
    assert bench.pinned_cpus() == (2, 5)


def test_between_steps_runs_before_every_timed_repetition_and_untimed(bench, monkeypatch) -> None:
    # A fake clock: the work between steps moves it by 100, each step by 1. The
    # steps must read 1 each, and the work must run once per timed repetition
    # of every function (not in the warm-up).
    clock = [0.0]
    calls: list[str] = []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def between() -> None:
        calls.append("between")
        clock[0] += 100.0

    def step(name: str):
        def run() -> None:
            calls.append(name)
            clock[0] += 1.0

        return run

    monkeypatch.setattr(bench, "BETWEEN_STEPS", between)
    med = bench._alternate({"a": step("a"), "b": step("b")}, reps=3, warmup=2)
    assert calls[:4] == ["a", "b", "a", "b"]  # the warm-up: nothing between
    assert calls[4:] == ["between", "a", "between", "b"] * 3
    assert med["a"].walls_s == [1.0, 1.0, 1.0] and med["b"].walls_s == [1.0, 1.0, 1.0]


def test_the_model_between_steps_runs_a_forward_and_a_backward_pass(bench) -> None:
    between = bench.ModelBetweenSteps()
    between()
    between()
    assert between.runs == 2
    grads = [p.grad for p in between.model.parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    # zero_grad before each pass: the second pass's gradients, not a sum of two
    first = [g.clone() for g in grads]
    between()
    params = list(between.model.parameters())
    assert all(bench.torch.equal(a, p.grad) for a, p in zip(first, params, strict=True))


class _Recording:
    """A Session whose step messages are kept, as its serializer sends them."""

    def __init__(self, bench, address: str) -> None:
        self.sent: list[list[bytes]] = []
        recording = self

        class Session(bench.Session):
            def _requests(self, header, frames):
                parts = list(super()._requests(header, frames))
                recording.sent.append([bench.encode_train_request(p) for p in parts])
                return parts

        self.session = Session(address, bench.DEFAULT_CHUNK)


@pytest.mark.parametrize("num_bytes", [1024, 1572864])
def test_the_ready_made_step_is_the_projects_own(bench, served: str, num_bytes: int) -> None:
    # Table (d)'s packed and server-alone variants send the very bytes a
    # Session sends for that step: the same messages, so their difference to
    # the project is the project's handling, not another layout.
    recording = _Recording(bench, served)
    try:
        acts = bench.torch.zeros(1, 2, num_bytes // 8)
        mask = bench.torch.ones(1, 2, dtype=bench.torch.int64)
        labels = bench.torch.zeros(1, 2, dtype=bench.torch.int64)
        recording.session.run_step(acts, mask, labels, "eval")
    finally:
        recording.session.close()
    _, step = bench.project_step_messages(num_bytes, bench.DEFAULT_CHUNK)
    assert recording.sent == [step]
    assert len(step) == -(-num_bytes // bench.DEFAULT_CHUNK)  # the small ones ride along


def test_every_side_of_table_d_steps_against_the_real_servers(bench, served: str) -> None:
    # Each variant completes its steps; the server-alone one is answered by the
    # project's server, which reads the step (told to validate it with the
    # echo's hidden size, it refuses the upload's width).
    med = bench.bench_sides(served, 4 * bench.DEFAULT_CHUNK + 8, reps=3)
    assert list(med) == list(bench.SIDES)
    assert all(len(t.walls_s) == 3 and min(t.walls_s) > 0 for t in med.values())
    hello, step = bench.project_step_messages(1024, bench.DEFAULT_CHUNK, step=9)
    strict = bench.encode_train_request(
        bench.TrainHelloInfo(
            client_id=0, scenario_hash=f"{bench.DEFAULT_CHUNK}:1:1", wire_dtype="float32"
        )
    )
    with contextlib.ExitStack() as stack:
        channel = stack.enter_context(bench.rpc.make_channel(served))
        answered = bench.ReadyMade(channel, bench.TRAIN_METHOD, hello, step)
        stack.callback(answered.close)
        reply = bench.decode_train_response(answered.run())
        assert (reply.fields.step, list(reply.fields.tensor_names)) == (9, [])
        refused = bench.ReadyMade(channel, bench.TRAIN_METHOD, strict, step)
        stack.callback(refused.close)  # drains the failed stream quietly
        with pytest.raises(bench.grpc.RpcError) as err:
            refused.run()
        assert err.value.code() == bench.grpc.StatusCode.INVALID_ARGUMENT
        assert "activations.shape[2]: =128, expected 768" in err.value.details()


def test_the_sink_answers_once_per_step(bench, served: str) -> None:
    # Two steps' messages in one batch get two replies, each after its step's
    # last message: not one per message, and none before the step is in.
    hello, step = bench.project_step_messages(3 * bench.DEFAULT_CHUNK, bench.DEFAULT_CHUNK)
    assert len(step) == 3
    with bench.rpc.make_channel(served) as channel:
        sunk = bench.ReadyMade(
            channel, bench.SINK_METHOD, hello, step * 2, (("msgs", str(len(step))),)
        )
        replies = [sunk.run()]
        replies.append(next(sunk.responses))
        sunk.requests.close()
        assert next(sunk.responses, None) is None  # no third reply
        assert [bench.decode_train_response(r).fields.step for r in replies] == [0, 0]
        partial = bench.ReadyMade(
            channel, bench.SINK_METHOD, hello, step[:2], (("msgs", str(len(step))),)
        )
        partial.requests.put_all(step[:2])
        partial.requests.wait_sent()
        partial.requests.close()
        assert next(partial.responses, None) is None  # two of three messages: no reply


@pytest.mark.slow
def test_a_child_that_ends_with_its_stdin_is_waited_for_not_killed(bench) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, text=True
    )
    bench.stop_child(child, timeout_s=30)
    assert child.returncode == 0  # ended by itself: a kill would read -9


@pytest.mark.slow
def test_a_child_that_outlives_its_stdin_is_killed_by_its_pid(bench) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE, text=True
    )
    try:
        bench.stop_child(child, timeout_s=0.5)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
