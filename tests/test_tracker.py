"""Lifecycle, hot-path semantics and flush/finish guarantees of ``steplog.Tracker``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import anyio
import pytest

import steplog

from conftest import GateBackend, SlowBackend, cpu_tensors_as_device, stall_mid_drain, wait_until

# Every test here runs with both implementations of log(): compiled and pure Python.
pytestmark = pytest.mark.usefixtures("log_impl")


def make(*backends, **kwargs):
    return steplog.Tracker(*(backends or (steplog.MemoryBackend(),)), **kwargs)


def test_init_merges_experiment_config_with_run_config():
    """init() records experiment_config overlaid by the optimizer's config."""
    mem = steplog.MemoryBackend()
    tracker = make(mem, experiment_config={"model": "gpt2", "lr": 1.0})
    info = tracker.init({"lr": 0.1, "optimizer": "GCG"})
    assert info.config == {"model": "gpt2", "lr": 0.1, "optimizer": "GCG"}
    tracker.finish()
    assert mem.config == {"model": "gpt2", "lr": 0.1, "optimizer": "GCG"}
    assert mem.info is not None and mem.info.experiment == "default"


def test_log_before_init_raises_tracker_error_with_hint():
    """log() without a run raises InactiveRunError telling the user to call init()."""
    tracker = make()
    with pytest.raises(steplog.InactiveRunError, match=r"call init\(\)"):
        tracker.log({"loss": 1.0})
    assert issubclass(steplog.InactiveRunError, steplog.TrackerError)


def test_log_after_finish_raises_and_says_run_was_finished():
    """log() after finish() raises, naming the finished run and the fix."""
    tracker = make()
    tracker.init()
    tracker.finish()
    with pytest.raises(steplog.InactiveRunError, match="the run was finished"):
        tracker.log({"loss": 1.0})
    with pytest.raises(steplog.InactiveRunError):
        tracker.flush()


class _Paused:
    """A value whose ``repr()`` (which ``log()`` calls on its caller's thread, to record
    a value it cannot serialise) waits until :attr:`go` is set."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()

    def __repr__(self) -> str:
        self.inside.set()
        self.go.wait(10)
        return "paused"


@pytest.mark.parametrize("durability", ["thread", "process"])
def test_a_log_under_way_in_another_thread_as_finish_ends_the_run_raises(runs_root, durability):
    """A log() of another thread that began before finish() and goes on after the run
    ended raises InactiveRunError: it is never counted as logged and then left out of
    the file (before: it returned normally and its event was lost, counted nowhere)."""
    tracker = steplog.Tracker(steplog.JsonlBackend(runs_root), durability=durability)
    tracker.init()
    tracker.log({"before": 1})
    value = _Paused()
    outcome: list[BaseException | None] = []

    def late() -> None:
        try:
            tracker.log({"late": value})
        except steplog.InactiveRunError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=late)
    thread.start()
    assert value.inside.wait(10)  # inside log(), past its check for an active run
    stats = tracker.finish()
    value.go.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], steplog.InactiveRunError)
    assert "not recorded" in str(outcome[0])
    assert (stats.logged, stats.written, stats.dropped) == (1, 1, 0)
    (path,) = runs_root.rglob("*.jsonl")
    assert [e.data for e in steplog.read_run(path).records] == [{"before": 1}]


class _HeldMemory(steplog.MemoryBackend):
    """A memory backend whose writer-thread writes wait until :attr:`go` is set (the
    buffer then fills up behind them)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def write_sync(self, events):
        self.go.wait(10)
        super().write_sync(events)


def test_a_log_waiting_for_room_as_finish_ends_the_run_is_written_or_raises():
    """Under 'block', a log() of another thread that waits for room when finish() ends
    the run either has its event written or raises InactiveRunError: every call that
    returned is in the backend, and logged == written + dropped (before: the waiting
    call went in after the writer's last drain, returned normally, and was lost)."""
    mem = _HeldMemory()
    tracker = steplog.Tracker(mem, buffer_size=8, batch_size=4, overflow="block")
    tracker.init()
    returned: list[int] = []
    ended: list[BaseException] = []

    def produce() -> None:
        for i in range(10_000):
            try:
                tracker.log({"i": i})
            except steplog.InactiveRunError as exc:
                ended.append(exc)
                return
            returned.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    # The writer is held inside its first write, the buffer fills, the producer waits.
    assert wait_until(lambda: len(returned) >= 8)
    settled = -1
    while settled != len(returned):
        settled = len(returned)
        time.sleep(0.05)
    results: list[steplog.RunStats | None] = []
    finisher = threading.Thread(target=lambda: results.append(tracker.finish()))
    finisher.start()
    assert wait_until(lambda: not tracker.active)
    mem.go.set()
    finisher.join(10)
    producer.join(10)
    (stats,) = results
    assert stats is not None and len(ended) == 1
    assert [e.data["i"] for e in mem.records] == returned
    assert stats.logged == stats.written + stats.dropped == len(returned)


@pytest.mark.parametrize("bad", [[("loss", 1.0)], "loss", 3.0, None])
def test_non_mapping_data_raises_type_error_at_the_call(bad):
    """A non-mapping data argument raises TypeError in log() and is not recorded."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    with pytest.raises(TypeError, match="mapping"):
        tracker.log(bad)
    tracker.log({"ok": 1})
    stats = tracker.finish()
    assert stats.logged == 1
    assert [e.data for e in mem.records] == [{"ok": 1}]


def test_mapping_that_is_not_a_dict_is_accepted():
    """Any Mapping is accepted and copied to a plain dict."""
    from types import MappingProxyType

    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    tracker.log(MappingProxyType({"a": 1}))
    tracker.finish()
    assert mem.records[0].data == {"a": 1}
    assert type(mem.records[0].data) is dict


def test_init_on_active_tracker_warns_and_finishes_previous_run():
    """A second init() warns and finishes the first run before opening a new one."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    first = tracker.init()
    tracker.log({"x": 1})
    with pytest.warns(steplog.TrackerWarning, match="previous run not finished"):
        second = tracker.init()
    assert first.run_id != second.run_id
    assert tracker.last_stats is not None and tracker.last_stats.logged == 1
    tracker.finish()


def test_finish_on_inactive_tracker_warns_and_returns_none():
    """finish() without a run warns and returns None instead of raising."""
    tracker = make()
    with pytest.warns(steplog.TrackerWarning, match="inactive"):
        assert tracker.finish() is None


def test_tracker_is_reusable_with_new_run_id_and_file(runs_root):
    """Each init() after finish() opens a fresh run: new id, new JSONL file."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend, experiment_name="reuse")
    paths, ids = [], []
    for run in range(3):
        info = tracker.init({"run": run})
        tracker.log({"v": run})
        tracker.finish()
        ids.append(info.run_id)
        paths.append(backend.path)
    assert len(set(ids)) == 3
    assert len(set(paths)) == 3
    for run, path in enumerate(paths):
        read = steplog.read_run(path)
        assert read.config == {"run": run}
        assert read.history["v"] == [run]
        assert read.status == "finished"


def test_mutating_data_after_log_does_not_change_the_record():
    """log() copies the top-level mapping: later changes to the caller's dict are not seen."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    data = {"loss": 1.0}
    tracker.log(data)
    data["loss"] = 2.0
    data["extra"] = True
    tracker.log(data)
    tracker.finish()
    assert [e.data for e in mem.records] == [{"loss": 1.0}, {"loss": 2.0, "extra": True}]


def test_steps_auto_increment_and_continue_after_explicit_step():
    """Steps count from 0; an explicit step=k is recorded and counting resumes at k+1."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    tracker.log({"a": 0})
    tracker.log({"a": 1})
    tracker.log({"a": 2}, step=10)
    tracker.log({"a": 3})
    tracker.log({"a": 4}, step=5)
    tracker.finish()
    assert [e.step for e in mem.records] == [0, 1, 10, 11, 5]
    assert all(e.time > 0 for e in mem.records)


@pytest.mark.parametrize(
    ("step", "error"), [(1.5, TypeError), ("3", TypeError), (True, TypeError), (-1, ValueError)]
)
def test_bad_step_raises_at_the_call(step, error):
    """A step that is not a non-negative integer raises at log()."""
    tracker = make()
    tracker.init()
    with pytest.raises(error, match="step"):
        tracker.log({"a": 1}, step=step)
    tracker.finish()


def test_step_may_be_passed_by_position_like_wandb_log():
    """log(data, k) is log(data, step=k), as in wandb.log and MLflow's log_metrics (a
    keyword-only default costs every call a lookup in __kwdefaults__); a bad one
    raises the same errors."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    tracker.log({"a": 0}, 7)
    tracker.log({"a": 1})
    with pytest.raises(TypeError, match="step"):
        tracker.log({"a": 2}, 1.5)
    with pytest.raises(ValueError, match="step"):
        tracker.log({"a": 2}, -1)
    tracker.finish()
    assert [(e.step, e.data) for e in mem.records] == [(7, {"a": 0}), (8, {"a": 1})]


def test_numpy_integer_step_is_accepted():
    """Integer-like steps (numpy.int64) are accepted and stored as int."""
    np = pytest.importorskip("numpy")
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    tracker.log({"a": 1}, step=np.int64(7))
    tracker.finish()
    assert mem.records[0].step == 7
    assert type(mem.records[0].step) is int


def test_flush_returns_after_every_backend_wrote_everything():
    """flush() returns only when all events logged before it are written, slow backends too."""
    slow = SlowBackend(0.02)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(slow, mem, batch_size=16)
    tracker.init()
    for i in range(200):
        tracker.log({"i": i})
    tracker.flush()
    assert [e.data["i"] for e in slow.records] == list(range(200))
    assert [e.data["i"] for e in mem.records] == list(range(200))
    tracker.finish()


def test_flush_timeout_raises_flush_timeout_error():
    """flush(timeout=...) raises FlushTimeoutError (a TimeoutError) when backends are too slow."""
    slow = SlowBackend(0.5)
    tracker = steplog.Tracker(slow)
    tracker.init()
    tracker.log({"i": 1})
    with pytest.raises(steplog.FlushTimeoutError):
        tracker.flush(timeout=0.05)
    assert issubclass(steplog.FlushTimeoutError, TimeoutError)
    tracker.finish()


def test_finish_returns_stats_and_writes_summary():
    """finish(summary) returns RunStats and hands summary, status and stats to backends."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    tracker.init()
    for i in range(1000):
        tracker.log({"i": i})
    tracker.summary["from_attr"] = 1
    stats = tracker.finish({"best_loss": 0.1})
    assert stats.logged == 1000
    assert stats.written == 1000
    assert stats.dropped == 0
    assert stats.batches >= 1
    assert stats.backend_errors == 0
    assert stats.drain_seconds >= 0
    assert stats.backends["memory"].delivered == 1000
    assert mem.summary == {"from_attr": 1, "best_loss": 0.1}
    assert mem.status == "finished"
    assert mem.stats == stats


def test_run_context_records_finished():
    """with tracker.run(config) finishes the run with status 'finished'."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    with tracker.run({"a": 1}) as info:
        tracker.log({"x": 1})
        assert tracker.active
    assert not tracker.active
    assert mem.status == "finished"
    assert info.config == {"a": 1}


def test_run_context_records_failed_and_reraises():
    """An exception inside run() records 'failed', keeps the events and re-raises."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    with pytest.raises(ZeroDivisionError), tracker.run():
        tracker.log({"x": 1})
        _ = 1 / 0
    assert mem.status == "failed"
    assert len(mem.records) == 1


def test_run_context_records_interrupted_on_keyboard_interrupt():
    """KeyboardInterrupt inside run() records 'interrupted' and propagates."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    with pytest.raises(KeyboardInterrupt), tracker.run():
        tracker.log({"x": 1})
        raise KeyboardInterrupt
    assert mem.status == "interrupted"
    assert len(mem.records) == 1


def test_finish_inside_run_context_is_respected():
    """Calling finish(summary) inside run() keeps that summary; the exit does not finish twice."""
    mem = steplog.MemoryBackend()
    tracker = make(mem)
    with tracker.run():
        tracker.log({"x": 1})
        tracker.finish({"best": 3})
    assert mem.summary == {"best": 3}
    assert mem.status == "finished"


def test_tracker_as_context_manager():
    """with Tracker(...) as t: opens a run on entry and finishes it on exit."""
    mem = steplog.MemoryBackend()
    with steplog.Tracker(mem) as tracker:
        tracker.log({"x": 1})
    assert mem.status == "finished"
    assert not tracker.active


def test_default_backend_is_jsonl_under_runs(tmp_path, monkeypatch):
    """With no backend given, the run goes to runs/<experiment>/<run_id>.jsonl (or under
    $STEPLOG_ROOT, when it is set)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPLOG_ROOT", raising=False)
    tracker = steplog.Tracker(experiment_name="exp")
    info = tracker.init()
    tracker.log({"loss": 0.5})
    tracker.finish()
    path = tmp_path / "runs" / "exp" / f"{info.run_id}.jsonl"
    assert path.exists()
    assert steplog.read_run(path).history["loss"] == [0.5]


@pytest.mark.slow
def test_many_threads_logging_at_once_keep_all_events_and_per_thread_order():
    """8 threads x 100 000 events: every event arrives, each thread's order is kept."""
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem, buffer_size=4096, batch_size=256)
    tracker.init()
    per_thread = 100_000

    def produce(tid: int) -> None:
        for i in range(per_thread):
            tracker.log({"tid": tid, "i": i})

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = tracker.finish()
    assert stats.logged == stats.written == 8 * per_thread
    seen: dict[int, list[int]] = {t: [] for t in range(8)}
    for event in mem.records:
        seen[event.data["tid"]].append(event.data["i"])
    for t in range(8):
        assert seen[t] == list(range(per_thread))
    assert len({e.step for e in mem.records}) == 8 * per_thread  # steps stay unique


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"buffer_size": 0}, ValueError, "buffer_size"),
        ({"batch_size": -1}, ValueError, "batch_size"),
        ({"flush_interval": 0}, ValueError, "flush_interval"),
        ({"overflow": "drop"}, ValueError, "overflow"),
        ({"experiment_name": "../escape"}, ValueError, "experiment_name"),
        ({"experiment_name": ""}, ValueError, "experiment_name"),
        ({"experiment_config": [1]}, TypeError, "experiment_config"),
        ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout"),
    ],
)
def test_bad_constructor_arguments_raise_clear_errors(kwargs, error, match):
    """Invalid options raise at construction, naming the option."""
    with pytest.raises(error, match=match):
        steplog.Tracker(steplog.MemoryBackend(), **kwargs)


def test_options_are_read_back_as_checked_and_fixed_once_the_tracker_is_made():
    """The tracker's option attributes show the checked values (an overflow policy, a
    compiled redact pattern, the default JSONL backend) and cannot be reassigned."""
    tracker = steplog.Tracker(buffer_size=8, overflow="drop_oldest", tags=["a", "b", "a"])
    assert tracker.buffer_size == 8
    assert tracker.overflow is steplog.OverflowPolicy.DROP_OLDEST
    assert tracker.tags == ("a", "b")
    assert tracker.redact is not None and tracker.redact.search("api_key")
    assert [type(b) for b in tracker.backends] == [steplog.JsonlBackend]
    with pytest.raises(AttributeError, match="buffer_size is fixed"):
        tracker.buffer_size = 16


def test_non_backend_positional_argument_is_rejected():
    """Passing something that is not a Backend positionally raises TypeError."""
    with pytest.raises(TypeError, match="Backend"):
        steplog.Tracker("runs")  # type: ignore[arg-type]


def test_duplicate_backend_types_get_distinct_names():
    """Two backends of one type are reported under distinct names in the stats."""
    tracker = steplog.Tracker(steplog.MemoryBackend(), steplog.MemoryBackend())
    tracker.init()
    tracker.log({"a": 1})
    stats = tracker.finish()
    assert set(stats.backends) == {"memory", "memory-2"}
    assert all(b.delivered == 1 for b in stats.backends.values())


def test_bad_summary_raises_type_error_and_keeps_run_active():
    """finish() with a non-mapping summary raises before anything is closed."""
    tracker = make()
    tracker.init()
    with pytest.raises(TypeError, match="summary"):
        tracker.finish([1, 2])  # type: ignore[arg-type]
    assert tracker.active
    tracker.finish()


def test_flush_is_exact_when_repeated_while_the_worker_is_busy():
    """Many log/flush rounds: after each flush() every earlier event has been written."""
    slow = SlowBackend(0.001)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(slow, mem, batch_size=8, flush_interval=0.01)
    tracker.init()
    total = 0
    for round_ in range(150):
        for _ in range(round_ % 37 + 1):
            tracker.log({"i": total})
            total += 1
        tracker.flush()
        assert len(mem.records) == total
        assert len(slow.records) == total
    tracker.finish()


def test_flush_requested_while_the_worker_is_mid_drain_covers_later_events():
    """A flush arriving while the worker waits on a full backend still covers every event.

    The worker is held inside a drain (a stalled backend's backlog is full) while more
    events are logged and flush() is called: when flush() returns, those are written too.
    """

    class SlowGate(GateBackend):
        async def write(self, events):
            while not self.gate.is_set():
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)  # each batch lands well after the one before
            await steplog.MemoryBackend.write(self, events)

    gate = SlowGate()
    tracker, mem = stall_mid_drain(gate)
    tracker.log({"i": 10})
    tracker.log({"i": 11})
    seen_at_return: list[tuple[int, int]] = []

    def flush() -> None:
        tracker.flush()
        seen_at_return.append((len(gate.records), len(mem.records)))

    flusher = threading.Thread(target=flush)
    flusher.start()
    time.sleep(0.1)
    assert not seen_at_return  # still waiting on the stalled backend
    gate.gate.set()
    flusher.join(10)
    assert seen_at_return == [(12, 12)]
    tracker.finish()


def test_nested_lists_are_recorded_as_they_were_at_the_call(runs_root):
    """log() encodes at the call: changing a list inside the dict afterwards is not seen."""
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = make(jsonl)
    tracker.init()
    history = [1.0, 2.0]
    tracker.log({"history": history, "nested": {"best": history}})
    history.append(3.0)
    tracker.log({"history": history})
    tracker.finish()
    records = steplog.read_run(jsonl.path).records
    assert records[0].data == {"history": [1.0, 2.0], "nested": {"best": [1.0, 2.0]}}
    assert records[1].data == {"history": [1.0, 2.0, 3.0]}


def test_fast_and_slow_events_keep_their_order_and_values(runs_root):
    """Events orjson cannot encode as they are (numpy, huge ints, odd keys) interleave
    with plain ones in logging order, and streaks of them do not change the result."""
    np = pytest.importorskip("numpy")
    jsonl = steplog.JsonlBackend(runs_root)
    mem = steplog.MemoryBackend()
    tracker = make(jsonl, mem, batch_size=7)
    tracker.init()
    expected = []
    for i in range(3_000):
        if (i // 50) % 2:  # streaks of 50 slow events, then 50 plain ones
            kind = i % 3
            data = (
                {"i": np.int64(i), "x": np.float32(0.5)}
                if kind == 0
                else {"i": i, "big": 2**70 + i}
                if kind == 1
                else {"i": i, 1: "int key"}
            )
            want = {"i": i, "x": 0.5} if kind == 0 else dict(data)
            if kind == 2:
                want = {"i": i, "1": "int key"}
        else:
            data = {"i": i, "x": float("nan") if i % 10 == 0 else i / 2}
            want = dict(data)
        tracker.log(data)
        expected.append(want)
    tracker.finish()
    for records in (steplog.read_run(jsonl.path).records, mem.records):
        assert [e.step for e in records] == list(range(3_000))
        for record, want in zip(records, expected, strict=True):
            for key, value in want.items():
                got = record.data[key]
                assert got == value or (value != value and got != got), (record, want)


def test_a_value_whose_repr_raises_costs_that_value_only(runs_root, caplog):
    """One value that cannot even be repr()'d is a marker; its event and batch survive."""

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    jsonl = steplog.JsonlBackend(runs_root)
    tracker = make(jsonl)
    tracker.init()
    for i in range(100):
        tracker.log({"i": i, "odd": Broken()} if i == 50 else {"i": i})
    stats = tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert run.history["i"] == list(range(100))
    assert run.records[50].data["odd"] == f"<unrepresentable {Broken.__qualname__}>"
    assert stats.backends["jsonl"].delivered == 100


def test_byte_budget_applies_through_the_tracker():
    """buffer_bytes bounds the buffer like buffer_size: drops are exact, lines whole."""
    gate = GateBackend()
    tracker = make(gate, buffer_size=10_000, buffer_bytes=20_000, overflow="drop_newest")
    tracker.init()
    for i in range(2_000):
        tracker.log({"i": i, "pad": "x" * 200})
    gate.gate.set()
    stats = tracker.finish()
    assert stats.dropped > 0
    assert stats.logged == stats.written + stats.dropped == 2_000
    assert [e.data["i"] for e in gate.records] == sorted(e.data["i"] for e in gate.records)
    assert all(e.data["pad"] == "x" * 200 for e in gate.records)


def test_a_backend_reading_one_event_gets_it_decoded():
    """Backends may index a batch (e.g. only its last event) as well as iterate it."""
    seen = []

    class LastOnly(steplog.Backend):
        async def open(self, run):
            pass

        async def write(self, events):
            last = events[-1]
            seen.append((len(events), last.step, last.data))

        async def close(self, end):
            pass

    tracker = make(LastOnly(), batch_size=10)
    tracker.init()
    for i in range(100):
        tracker.log({"i": i, "v": float("inf")})
    tracker.finish()
    assert sum(n for n, _, _ in seen) == 100
    assert seen[-1][1:] == (99, {"i": 99, "v": float("inf")})


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["thread", "process"])
@pytest.mark.parametrize("policy", ["block", "drop_oldest", "drop_newest"])
def test_log_from_a_signal_handler_never_deadlocks(tmp_path, policy, durability):
    """A timer signal whose handler logs, interrupting log() calls of the main loop (small
    buffer), neither deadlocks nor raises; every call is accounted for, the loop's order
    kept."""
    if sys.platform == "win32":
        pytest.skip("POSIX timer signals")
    from steplog._ring import ProcessWriter

    if durability == "process" and not ProcessWriter.supported():
        pytest.skip("durability='process' needs POSIX on x86-64")
    code = f"""
import signal, steplog
t = steplog.Tracker(steplog.JsonlBackend({str(tmp_path)!r}), buffer_size=64, batch_size=8,
                    overflow={policy!r}, durability={durability!r})
t.init()
fired = [0]
def handler(signum, frame):
    n = fired[0]
    fired[0] += 1
    t.log({{"src": "timer", "n": n}})
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
for i in range(60_000):
    t.log({{"src": "loop", "n": i}})
signal.setitimer(signal.ITIMER_REAL, 0, 0)
s = t.finish()
print(fired[0], s.logged, s.written, s.dropped)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    fired, logged, written, dropped = map(int, out.stdout.split())
    assert fired > 10
    assert logged == 60_000 + fired == written + dropped
    (path,) = tmp_path.rglob("*.jsonl")
    run = steplog.read_run(path)  # whole lines only
    # Exact under every policy: a handler interrupting a drop under the buffer's lock
    # queues its event aside instead of touching the half-done drop (issue #13 item 8).
    assert len(run.records) == written
    loop = [e.data["n"] for e in run.records if e.data["src"] == "loop"]
    timer = [e.data["n"] for e in run.records if e.data["src"] == "timer"]
    # The loop's order is kept. Handler calls are recorded once each, in order too,
    # except where a handler was itself interrupted by the next signal (Python runs the
    # next handler inside it): the inner call then finishes, and is queued, first.
    assert loop == sorted(set(loop))
    assert len(timer) == len(set(timer)) and set(timer) <= set(range(fired))
    if policy == "block":
        assert loop == list(range(60_000)) and sorted(timer) == list(range(fired))


@pytest.mark.slow
def test_another_thread_changing_a_nested_dict_never_raises_into_log(runs_root, monkeypatch):
    """log() of a dict whose nested dict another thread keeps changing (the snapshot path
    walks it: tensors driven as device ones) never raises; every call is recorded
    (issue #13 item 9)."""
    torch = pytest.importorskip("torch")
    cpu_tensors_as_device(monkeypatch)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside log()'s walks, not once per 5 ms
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = make(jsonl)
    tracker.init()
    nested: dict[str, object] = {f"k{i}": float(i) for i in range(50)}
    stop = threading.Event()

    def mutate() -> None:
        i = 0
        while not stop.is_set():
            nested[f"n{i % 500}"] = float(i)
            if i % 3 == 0:
                nested.pop(f"n{(i * 7) % 500}", None)
            i += 1

    mutator = threading.Thread(target=mutate)
    mutator.start()
    try:
        for i in range(5_000):
            tracker.log({"i": i, "t": torch.tensor(float(i)), "nested": nested})
    finally:
        stop.set()
        mutator.join()
        sys.setswitchinterval(interval)
    stats = tracker.finish()
    assert stats.logged == stats.written == 5_000
    assert steplog.read_run(jsonl.path).history["i"] == list(range(5_000))


def test_a_log_while_finish_is_under_way_says_the_run_is_finishing():
    """A log() that arrives once finish() has begun (here from a backend's close, which
    runs inside finish()) is refused with a hint about the end, not "call init() first"."""
    messages: list[str] = []

    class LogsAtClose(steplog.MemoryBackend):
        def close_sync(self, end):
            try:
                tracker.log({"late": 1})
            except steplog.InactiveRunError as exc:
                messages.append(str(exc))
            super().close_sync(end)

    tracker = steplog.Tracker(LogsAtClose())
    tracker.init()
    tracker.log({"x": 1})
    tracker.finish()
    assert len(messages) == 1
    assert "finishing" in messages[0] and "first" not in messages[0]
