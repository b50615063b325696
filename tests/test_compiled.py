"""The compiled ``log()`` (``steplog._speedups``) against the pure-Python one (issue #26).

``Tracker.log`` is the C fast path where the extension was built, and
``_TrackerBase._log_py`` otherwise; the C code hands every uncommon call to the Python
methods. These tests drive both with the same calls and require the same events, the
same errors and the same alerts; and check the fallback when the extension is off.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import subprocess
import sys
import types

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import steplog
from steplog import watch
from steplog.tracker import _TrackerBase

from conftest import COMPILED

needs_compiled = pytest.mark.skipif(
    not COMPILED, reason="steplog._speedups was not built (no C compiler at install time)"
)

_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    st.sampled_from([np.float32("nan"), np.int64(7), np.arange(3), "null", "a:null"]),
)
_records = st.dictionaries(
    st.sampled_from(["loss", "acc", "lr", "nested.k", "null", "s"]), _values, max_size=5
)
_steps = st.one_of(
    st.none(), st.none(), st.integers(0, 40), st.sampled_from([-1, True, 1.5, "3", 2**70])
)
_calls = st.lists(
    st.tuples(_records, _steps, st.sampled_from(["dict", "dict", "dict", "mapping"])),
    max_size=40,
)


def _run(calls, impl: str, watchers: list[watch.Watcher]) -> tuple[list, list, list]:
    """Log ``calls`` with one implementation; return the events, errors and alerts."""
    log = _TrackerBase._log_py if impl == "python" else _TrackerBase.log
    memory = steplog.MemoryBackend()
    alerts: list[str] = []
    tracker = steplog.Tracker(
        memory,
        watchers=watchers,
        on_alert=(lambda alert: alerts.append(alert.message)) if watchers else None,
        batch_size=7,
    )
    tracker.init()
    errors = []
    for data, step, kind in calls:
        arg = types.MappingProxyType(data) if kind == "mapping" else dict(data)
        try:
            if step is None:
                log(tracker, arg)
            else:
                log(tracker, arg, step)
        except Exception as exc:
            errors.append((type(exc).__name__, str(exc)))
    tracker.finish()
    events = [(e.step, repr(e.data)) for e in memory.records]
    return events, errors, alerts


@needs_compiled
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=_calls, watched=st.sampled_from(["none", "one", "three"]))
def test_compiled_log_records_what_the_python_one_does(calls, watched):
    """Any sequence of calls — floats with NaN and infinities, huge ints, strings that
    contain "null", None, lists, numpy values and arrays, non-dict mappings, explicit,
    invalid and implicit steps — gives the same events (steps and values), the same
    errors and, with value watchers, the same alerts from both implementations."""

    def watchers() -> list[watch.Watcher]:
        if watched == "none":
            return []
        if watched == "one":
            return [watch.nonfinite("loss")]
        return [watch.nonfinite("loss"), watch.above("acc", 0.5), watch.nonfinite("lr")]

    assert _run(calls, "compiled", watchers()) == _run(calls, "python", watchers())


@needs_compiled
def test_compiled_log_takes_the_slow_spell_like_the_python_one():
    """A loop that logs values orjson cannot store as they are (numpy arrays) misses
    the fast path; after a streak of misses both implementations go straight to the
    slow path for a spell, then try the fast one again: same events either way."""
    calls = [({"a": np.arange(2) + i, "b": float(i)}, None, "dict") for i in range(30)]
    calls += [({"b": float(i), "c": math.nan}, None, "dict") for i in range(30)]
    assert _run(calls, "compiled", []) == _run(calls, "python", [])


@needs_compiled
@pytest.mark.parametrize("watched", ["one", "three"])
def test_compiled_log_feeds_the_value_watchers(watched):
    """The compiled path queues a watched plain float for the watchers itself: a loss
    that turns NaN, and one above a bound, raise the same alerts at the same steps as
    with the Python path (and they are raised at all)."""
    losses = [1.0 / (i + 1) for i in range(50)] + [math.nan] * 5 + [2.0] * 5
    calls = [({"loss": v, "acc": 0.1}, None, "dict") for v in losses]
    calls += [({"acc": 0.9}, None, "dict"), ({"loss": "text"}, None, "dict")]

    def watchers() -> list[watch.Watcher]:
        found = [watch.nonfinite("loss")]
        return found if watched == "one" else [*found, watch.above("loss", 1.5)]

    compiled = _run(calls, "compiled", watchers())
    assert compiled == _run(calls, "python", watchers())
    alerts = compiled[2]
    assert any("loss" in a and "50" in a for a in alerts), alerts
    if watched == "three":
        assert len(alerts) == 2, alerts


@needs_compiled
def test_compiled_log_is_a_method_with_the_same_signature_and_docs():
    """``Tracker.log`` keeps its signature (``step`` by position or keyword) and its
    docstring, and argument errors read as Python's would."""
    compiled, python = steplog.Tracker.log, _TrackerBase._log_py
    assert str(inspect.signature(compiled)) == "(self, /, data, step=None)"
    assert list(inspect.signature(python).parameters) == ["self", "data", "step"]
    assert compiled.__doc__ == python.__doc__
    memory = steplog.MemoryBackend()
    with steplog.Tracker(memory) as tracker:
        tracker.log({"a": 1.0}, 5)
        tracker.log(data={"a": 2.0}, step=6)
        tracker.log({"a": 3.0}, step=7)
        for call, message in [
            (lambda: tracker.log(), "missing 1 required positional argument: 'data'"),
            (lambda: tracker.log({}, 1, 2), "positional arguments but 4 were given"),
            (lambda: tracker.log({}, 1, step=2), "multiple values for argument 'step'"),
            (lambda: tracker.log({}, data={}), "multiple values for argument 'data'"),
            (lambda: tracker.log({}, stp=1), "unexpected keyword argument 'stp'"),
        ]:
            with pytest.raises(TypeError, match=message):
                call()
        with pytest.raises(TypeError, match="descriptor 'log'"):
            steplog.Tracker.log(object(), {})
    assert [e.step for e in memory.records] == [5, 6, 7]


def test_without_the_extension_log_is_the_python_path(tmp_path):
    """``STEPLOG_PURE_PYTHON=1`` (as where no compiler was there at install time) leaves
    ``Tracker.log`` the Python method; a run records the same as with the extension."""
    script = (
        "import steplog, sys\n"
        "from steplog.tracker import _TrackerBase\n"
        "assert steplog.Tracker.log is _TrackerBase._log_py, steplog.Tracker.log\n"
        "t = steplog.Tracker(steplog.JsonlBackend(sys.argv[1]))\n"
        "t.init()\n"
        "for i in range(1000):\n"
        "    t.log({'loss': 1.0 / (i + 1), 'nan': float('nan') if i % 7 == 0 else 0.0})\n"
        "print(t.finish().written)\n"
    )
    env = {**os.environ, "STEPLOG_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "1000"
    run = steplog.read_run(next(tmp_path.rglob("*.jsonl")))
    assert len(run.history["loss"]) == 1000
    assert sum(math.isnan(v) for v in run.history["nan"]) == 143


@needs_compiled
def test_an_emptied_bytearray_keeps_its_allocation_for_the_next_batch():
    """The writer empties the bytearray it has written (when nothing else holds it) and
    hands it back as the buffer's next one: appends then fill its allocation instead of
    growing a new one from nothing (bytearray's own resize would shrink it at the first
    append: its size is below half its allocation)."""
    from steplog import _speedups

    data = bytearray(b"x" * 100_000)
    allocated = data.__alloc__()
    assert _speedups.emptied(data) is True
    assert data == b"" and data.__alloc__() == allocated
    for i in range(1_000):
        _speedups.append(data, b"%05d\n" % i)
    assert data.__alloc__() == allocated  # no resize: the lines fit
    assert data.splitlines() == [b"%05d" % i for i in range(1_000)]
    _speedups.append(data, b"y" * 200_000)  # beyond it: grows as bytearray does
    assert data.endswith(b"y" * 200_000) and data.__alloc__() > 200_000
    view = memoryview(data)
    assert _speedups.emptied(data) is False  # a live view: left as it is
    with pytest.raises(BufferError):
        _speedups.append(data, b"z" * 400_000)
    view.release()


class _KeepsBatches(steplog.SyncBackend):
    """A sink that keeps every batch object it is handed (as a lazy sink might)."""

    def __init__(self) -> None:
        self.batches: list = []

    def open_sync(self, run, encoder) -> None:
        pass

    def write_sync(self, events) -> None:
        self.batches.append(events)

    def close_sync(self, end) -> None:
        pass


@needs_compiled
def test_the_writer_recycles_a_batch_only_when_nothing_else_holds_it(tmp_path):
    """The run file's batches are recycled (the buffer's bytearray keeps its allocation
    from batch to batch); a sink that keeps the batches it was handed keeps them intact:
    the writer does not recycle a bytearray anyone else still holds."""
    plain = steplog.Tracker(steplog.JsonlBackend(tmp_path / "plain"), batch_size=64)
    plain.init()
    buffer = plain._buffer
    assert buffer is not None
    recycled = 0
    for i in range(20_000):
        plain.log({"i": i, "loss": 0.5})
        if i % 500 == 499:
            plain.flush()
            recycled += buffer.data.__alloc__() > 1_000 or buffer.spare is not None
    plain.finish()
    assert recycled >= 30  # (a take may find a batch still under way: most, not all)
    run = steplog.read_run(next((tmp_path / "plain").rglob("*.jsonl")))
    assert run.history["i"] == list(range(20_000))

    keeper = _KeepsBatches()
    tracker = steplog.Tracker(keeper, steplog.JsonlBackend(tmp_path / "kept"), batch_size=64)
    tracker.init()
    for i in range(20_000):
        tracker.log({"i": i})
    tracker.finish()
    kept = [line for batch in keeper.batches for line in bytes(batch.data).splitlines()]
    assert [orjson.loads(line)["data"]["i"] for line in kept] == list(range(20_000))


_FINALIZER_SCRIPT = """
import gc, math, time
import steplog
from steplog import watch

alerts = []
t = steplog.Tracker(steplog.MemoryBackend(), watchers=[watch.nonfinite("loss")],
                    on_alert=lambda a: alerts.append(a.message), flush_interval=0.01)
t.init()
for i in range(5):
    t.log({"loss": 0.5})
t.flush()

class Finalizer:
    def __del__(self):
        time.sleep(0.3)  # releases the GIL: the writer swaps and checks the queue

gc.disable()
keep = [(i, -i) for i in range(5000)]  # no free 2-tuples: the next one is a GC allocation
f = Finalizer(); f.me = f; del f  # cyclic garbage with a finalizer
gc.set_threshold(1)
gc.enable()
t.log({"loss": math.nan})  # the (step, value) tuple's allocation runs the finalizer
gc.set_threshold(700)
stats = t.finish()
print(stats.alerts, alerts)
"""


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_a_watched_value_survives_a_finalizer_that_lets_the_writer_run(impl):
    """Queuing a watched value makes a tuple, which can start the garbage collector;
    a finalizer that releases the GIL lets the writer swap the queue and check it. The
    value must still be checked (it was appended to the swapped-out queue, then
    lost: no alert), and the compiled path must not append into the freed queue (it
    crashed). Run in a subprocess: a crash must not take the test run with it."""
    if impl == "compiled" and not COMPILED:
        pytest.skip("steplog._speedups was not built (no C compiler at install time)")
    env = {**os.environ, "STEPLOG_PURE_PYTHON": "1" if impl == "python" else ""}
    out = subprocess.run(
        [sys.executable, "-c", _FINALIZER_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1 ['loss is nan at step 5']"


@pytest.mark.usefixtures("log_impl")
def test_a_failed_append_counts_nothing(tmp_path):
    """With a memoryview of the buffer alive, bytearray refuses to grow (BufferError,
    raised by log() as Python raises it): such an event is neither counted nor
    written, so ``logged == written + dropped`` and the file agree."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), flush_interval=1e6)
    tracker.init()
    for i in range(10):
        tracker.log({"i": i})
    tracker.flush()
    buffer = tracker._buffer
    assert buffer is not None
    view = memoryview(buffer.data)
    failed = 0
    for i in range(10, 60):
        try:
            tracker.log({"i": i, "pad": "x" * 5_000})
        except BufferError:
            failed += 1
    view.release()
    tracker.log({"i": 60})
    stats = tracker.finish()
    assert failed > 0
    run = steplog.read_run(next(tmp_path.rglob("*.jsonl")))
    assert stats.logged == stats.written == len(run.history["i"]) == 61 - failed


@pytest.mark.usefixtures("log_impl")
def test_log_calls_the_clock_the_module_names(monkeypatch):
    """Both paths call ``steplog.tracker._now`` as it is at the call (a test that
    freezes the clock by patching it, as freezegun does, freezes events' times)."""
    memory = steplog.MemoryBackend()
    tracker = steplog.Tracker(memory)
    tracker.init()
    monkeypatch.setattr(steplog.tracker, "_now", lambda: 1234.5)
    tracker.log({"a": 1.0})
    monkeypatch.undo()
    tracker.finish()
    assert [e.time for e in memory.records] == [1234.5]


@needs_compiled
def test_setup_and_bind_take_only_classes_with_the_slots_log_reads():
    """The compiled ``log()`` reads the tracker's, the buffer's and the value tap's hot
    attributes at their slots' offsets, which ``setup`` takes from the classes'
    ``__slots__``: a class without those slots is refused, and a refused ``setup``
    changes nothing."""
    from steplog import tracker as module
    from steplog._buffer import SPEEDUPS, LineBuffer
    from steplog._monitor import ValueTap

    class Plain:
        pass

    args = (vars(module), module._LINE, itertools.count)
    with pytest.raises(TypeError, match="declares no slot '_buffer'"):
        SPEEDUPS.setup(*args, Plain, LineBuffer, ValueTap)
    with pytest.raises(TypeError, match="declares no slot 'count'"):
        SPEEDUPS.setup(*args, _TrackerBase, Plain, ValueTap)
    with pytest.raises(TypeError, match="declares no slot 'key'"):
        SPEEDUPS.setup(*args, _TrackerBase, LineBuffer, Plain)
    with pytest.raises(TypeError, match="not the tracker class"):
        SPEEDUPS.bind(Plain, "")
    memory = steplog.MemoryBackend()
    tracker = steplog.Tracker(memory)
    tracker.init()
    tracker.log({"a": 1.0})
    tracker.log({"a": 2.0}, step=7)
    tracker.finish()
    assert [(e.step, e.data) for e in memory.records] == [
        (
            0,
            {"a": 1.0},
        ),
        (7, {"a": 2.0}),
    ]


class _Subclassed(steplog.Tracker):
    """A user's subclass with attributes of its own, some set before the base's."""

    def __init__(self, *args, **kwargs):
        self.before = "set before Tracker.__init__"
        super().__init__(*args, **kwargs)
        self.after = [1, 2]


@pytest.mark.usefixtures("log_impl")
def test_a_subclass_with_its_own_attributes_logs_as_the_base_does():
    memory = steplog.MemoryBackend()
    tracker = _Subclassed(memory)
    tracker.init()
    for i in range(5):
        tracker.log({"i": i, "x": i / 2})
    tracker.log({"i": 5}, step=20)
    tracker.log({"i": 6})
    tracker.finish()
    assert tracker.before and tracker.after == [1, 2]
    assert [(e.step, e.data["i"]) for e in memory.records] == [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 4),
        (20, 5),
        (21, 6),
    ]


@pytest.mark.usefixtures("log_impl")
@pytest.mark.parametrize(
    ("owner", "name"),
    [
        ("tracker", "_detour"),
        ("tracker", "_steps"),
        ("tracker", "_misses"),
        ("buffer", "count"),
        ("buffer", "limit"),
        ("buffer", "fast_line"),
        ("buffer", "data"),
    ],
)
def test_an_emptied_slot_raises_attribute_error_on_both_paths(owner, name):
    """A hot attribute deleted (nothing in steplog does it) is an AttributeError on
    either path, never a read of an empty slot."""
    tracker = steplog.Tracker(steplog.MemoryBackend())
    tracker.init()
    tracker.log({"a": 1.0})
    buffer = tracker._buffer
    with buffer.lock:  # (the writer leaves the buffer alone meanwhile)
        _log_without(tracker, tracker if owner == "tracker" else buffer, name, {"a": 2.0})
    tracker.finish()


def _log_without(tracker: steplog.Tracker, target: object, name: str, data: dict) -> None:
    """log() with ``target``'s attribute ``name`` deleted raises AttributeError (it is
    put back after)."""
    kept = getattr(target, name)
    delattr(target, name)
    try:
        with pytest.raises(AttributeError, match=name):
            tracker.log(data)
    finally:
        setattr(target, name, kept)


class _HidesSlot:
    """Ways a subclass can put something of its own under a tracker's slot name."""

    @staticmethod
    def make(name: str, how: str) -> type:
        if how == "slot":
            return type("Slotted", (steplog.Tracker,), {"__slots__": (name,)})
        if how == "mixin":  # a base before the tracker in the MRO, with a class default
            default = {"_buffer": None, "_detour": False, "_tap": None}.get(name, 0)
            mixin = type("Defaults", (), {name: default})
            return type("Mixed", (mixin, steplog.Tracker), {})
        storage = "_own" + name

        def get(self):
            return self.__dict__.get(storage)

        def put(self, value):
            self.__dict__[storage] = value

        return type("Prop", (steplog.Tracker,), {name: property(get, put)})


@needs_compiled
@pytest.mark.parametrize("how", ["slot", "mixin", "property"])
@pytest.mark.parametrize("name", ["_buffer", "_detour", "_steps", "_misses", "_slow_calls", "_tap"])
def test_a_subclass_that_hides_a_slot_logs_through_the_python_method(name, how):
    """The compiled log() reads the base's slots at their offsets and would not see
    what a subclass put under their names: it hands calls on such a class's instances
    to the Python method, which looks names up."""
    cls = _HidesSlot.make(name, how)
    assert cls._steplog_hides_slots and not steplog.Tracker._steplog_hides_slots
    memory = steplog.MemoryBackend()
    tracker = cls(memory, watchers=[watch.nonfinite("loss")])
    tracker.init()
    tracker.log({"loss": 1.0})
    _TrackerBase.log(tracker, {"loss": 2.0})  # (the compiled method, called explicitly)
    tracker.log({"loss": math.nan}, 10)
    tracker.log({"loss": 4.0, "v": np.float32(1)})
    stats = tracker.finish()
    assert [(e.step, e.data["loss"]) for e in memory.records][:2] == [(0, 1.0), (1, 2.0)]
    assert [e.step for e in memory.records] == [0, 1, 10, 11]
    assert stats.logged == stats.written == 4 and stats.alerts == 1


@needs_compiled
def test_setup_refuses_classes_whose_slots_lie_elsewhere():
    """A later setup() (a reload makes new classes) must find the slots where the bound
    log() reads them; another layout is refused and logging goes on unharmed."""
    from steplog import tracker as module
    from steplog._buffer import SPEEDUPS, LineBuffer
    from steplog._monitor import ValueTap

    names = ("_buffer", "_detour", "_steps", "_misses", "_slow_calls", "_tap")
    wide = type("Wide", (), {"__slots__": tuple(f"pad{i}" for i in range(50)) + names})
    memory = steplog.MemoryBackend()
    tracker = steplog.Tracker(memory)
    tracker.init()
    with pytest.raises(TypeError, match="moved"):
        SPEEDUPS.setup(vars(module), module._LINE, itertools.count, wide, LineBuffer, ValueTap)
    tracker.log({"a": 1.0})
    tracker.finish()
    assert [e.data for e in memory.records] == [{"a": 1.0}]


@pytest.mark.usefixtures("log_impl")
def test_a_step_counter_that_is_no_iterator_is_a_type_error():
    tracker = steplog.Tracker(steplog.MemoryBackend())
    tracker.init()
    tracker._steps = [1, 2]  # type: ignore[assignment]
    with pytest.raises(TypeError, match="'list' object is not an iterator"):
        tracker.log({"a": 1.0})
    tracker.finish()


def test_the_buffer_and_the_tap_may_not_have_subclasses_that_hide_their_slots():
    from steplog._buffer import LineBuffer
    from steplog._monitor import ValueTap

    with pytest.raises(TypeError, match="must not hide LineBuffer's slots"):
        type("Bad", (LineBuffer,), {"count": property(lambda self: 0)})
    type("Fine", (LineBuffer,), {"__slots__": ("extra",)})
    with pytest.raises(TypeError, match="must not hide ValueTap's slots"):
        type("Bad", (ValueTap,), {"values": []})


@pytest.mark.usefixtures("log_impl")
@pytest.mark.parametrize("name", ["key", "absent", "values"])
def test_an_emptied_tap_slot_raises_attribute_error_on_both_paths(name):
    tracker = steplog.Tracker(steplog.MemoryBackend(), watchers=[watch.nonfinite("loss")])
    tracker.init()
    tracker.log({"loss": 1.0})
    _log_without(tracker, tracker._tap, name, {"loss": 2.0})
    tracker.log({"loss": math.nan})
    stats = tracker.finish()
    assert stats.alerts == 1


def _spying(bases: tuple[type, ...], namespace: dict) -> type:
    """A tracker class with a log() of its own (calling the base's) and a spy on the
    Python method the compiled one hands calls to."""

    def log(self, data, step=None):
        self.own_calls += 1
        return super(cls, self).log(data, step)

    def _log_py(self, data, step=None):
        self.python_calls += 1
        return _TrackerBase._log_py(self, data, step)

    cls = type("Spying", bases, {"log": log, "_log_py": _log_py, **namespace})
    return cls


@needs_compiled
@pytest.mark.parametrize("hides", [False, True])
def test_a_subclass_with_a_log_of_its_own_keeps_it(hides):
    """A subclass's own log() stays its log; calling the base's from it takes the
    compiled path unless the class hides a slot (then the Python one)."""
    cls = _spying((steplog.Tracker,), {"__slots__": ("_misses",)} if hides else {})
    assert cls.log is cls.__dict__["log"]
    memory = steplog.MemoryBackend()
    tracker = cls(memory)
    tracker.own_calls = tracker.python_calls = 0
    tracker.init()
    for i in range(5):
        tracker.log({"i": i})
    tracker.finish()
    assert [e.data["i"] for e in memory.records] == [0, 1, 2, 3, 4]
    assert tracker.own_calls == 5
    assert tracker.python_calls == (5 if hides else 0)


def test_a_subclass_that_hides_a_slot_keeps_the_log_it_inherits():
    """Hiding a slot changes which implementation of the base's log() runs, never
    which log() the class has: a parent's own log() still runs."""

    class Parent(steplog.Tracker):
        __slots__ = ("_misses",)

        def log(self, data, step=None):
            self.seen = getattr(self, "seen", 0) + 1
            return super().log(data, step)

    class Child(Parent):
        pass

    class Hides(Child):
        __slots__ = ("_detour",)

    for cls in (Parent, Child, Hides):
        memory = steplog.MemoryBackend()
        tracker = cls(memory)
        tracker.init()
        tracker.log({"x": 1})
        tracker.log({"x": 2}, 7)
        tracker.finish()
        assert tracker.seen == 2
        assert [(e.step, e.data) for e in memory.records] == [(0, {"x": 1}), (7, {"x": 2})]


# -- the value watchers' compiled batch checks ------------------------------------------

_numbers = st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(-1e3, 1e3),
        st.sampled_from([1e308, -1e308, 0.0, -0.0, 5e-324, 0.1, 0.2, 0.3]),
        st.integers(-(2**70), 2**70),
        st.booleans(),
    ),
    max_size=40,
)


def _finite_floats(values) -> bool:
    return all(type(v) is float and math.isfinite(v) for v in values)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(values=_numbers)
@example(values=[0.0, -0.0])
@example(values=[-0.0, 1.0, 0.0])
def test_finite_range_is_min_and_max_of_a_list_of_finite_floats(values):
    """finite_range() gives exactly Python's (min, max) — the same one of 0.0 and -0.0
    among ties — where every value is a finite float, and None otherwise."""
    from steplog._buffer import SPEEDUPS

    got = SPEEDUPS.finite_range(values)
    if values and _finite_floats(values):
        assert repr(got) == repr((min(values), max(values)))
    else:
        assert got is None


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(
    values=_numbers,
    window=st.integers(1, 8),
    best=st.one_of(st.just(math.inf), st.floats(-10.0, 1e3)),
    factor=st.sampled_from([1.01, 1.5, 2.0, 3.0]),
)
def test_diverging_outcomes_are_what_the_python_code_decides(values, window, best, factor):
    """The compiled diverging() gives exactly what a plain reading of the watcher's
    Python code gives — the window sums of ``_window_sums`` (the same additions in the
    same order, so the same roundings), each mean, the lowest mean so far, whether the
    mean is over factor x that (> 0) — or None where a value is not a finite float or
    a sum not finite."""
    from steplog._buffer import SPEEDUPS
    from steplog.watch import _window_sums

    if len(values) < window:
        with pytest.raises(ValueError, match="window of 1 to len"):
            SPEEDUPS.diverging(values, window, 0.0, best, factor)
        return
    try:
        first = sum(values[:window])
    except OverflowError:
        return  # (the watcher does not call it then)
    got = SPEEDUPS.diverging(values, window, first, best, factor)
    sums = _window_sums(values, window) if _finite_floats(values) else []
    if not (sums and _finite_floats(sums)):
        assert got is None
        return
    held = []
    for total in sums:
        mean = total / window
        best = min(best, mean)
        held.append(best > 0 and mean > best * factor)
    assert repr(got) == repr((held if any(held) else None, best))


_watched = st.lists(
    st.one_of(
        st.floats(0.5, 50.0),  # a loss: most values
        st.floats(0.5, 50.0),
        st.floats(-5.0, 5.0),
        st.sampled_from([math.nan, math.inf, 1e308, 1e30, 3]),
    ),
    min_size=1,
    max_size=80,
)


@needs_compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=_watched,
    cuts=st.lists(st.integers(0, 80), max_size=8),
    kind=st.sampled_from(["diverging", "above", "below"]),
    window=st.integers(1, 12),
    factor=st.sampled_from([1.5, 2.0, 3.0]),
)
def test_watchers_with_compiled_batch_checks_fire_as_the_python_ones(
    values, cuts, kind, window, factor
):
    """diverging(), above() and below() fed the same batches fire the same alerts
    (steps, values, messages), count the same hits and keep the same state with the
    compiled batch checks as with the pure-Python ones — values with decimals that
    round, NaN, infinities, sums beyond float range, ints, a lowest mean <= 0."""

    def make() -> watch.Watcher:
        if kind == "diverging":
            return watch.diverging("x", factor=factor, window=window, cooldown=0)
        return getattr(watch, kind)("x", 10.0, cooldown=0)

    def feed() -> tuple:
        watcher = make()
        got = []
        for start, end in itertools.pairwise(bounds):
            alerts = watcher.check_batch(steps[start:end], values[start:end], 0.0, 1.0)
            got += [(a.step, a.value, a.message) for a in alerts]
        state = vars(watcher)
        return (
            repr(got),
            watcher.hits,
            watcher.fired,
            repr(state.get("_best")),
            repr(state.get("_values")),
        )

    steps = list(range(len(values)))
    bounds = sorted({0, len(values), *(c for c in cuts if c < len(values))})
    compiled = feed()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(watch, "_COMPILED", None)
        python = feed()
    assert python == compiled


@needs_compiled
def test_diverging_lists_the_means_for_its_alerts_once_a_batch_not_once_an_alert(monkeypatch):
    """With cooldown=0 a batch may start an episode at every other value; the compiled
    path lists the means for the alerts' messages growing geometrically, so a batch
    costs O(its length), not O(length²) (a red-team trial: 32 000 values took 53 s).
    The alerts are those of the Python path."""
    summed: list[int] = []
    window_sums = watch._window_sums

    def counting(series, window):
        summed.append(len(series))
        return window_sums(series, window)

    monkeypatch.setattr(watch, "_window_sums", counting)
    values = [1.0] + [1.0, 3.0] * 2_000
    steps = list(range(len(values)))

    def alerts() -> list[tuple]:
        w = watch.diverging("loss", factor=2.0, window=1, cooldown=0)
        return [(a.step, a.value, a.message) for a in w.check_batch(steps, values, 0.0, 1.0)]

    compiled = alerts()
    assert len(compiled) == 2_000
    assert sum(summed) <= 4 * len(values), summed
    monkeypatch.setattr(watch, "_COMPILED", None)
    assert alerts() == compiled
