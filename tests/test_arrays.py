"""Arrays and tensors: snapshot at log() time, conversion in the worker (CPU in CI).

The accelerator path (stacking device scalars, placeholders read back per batch) is
exercised on CPU by making CPU tensors report ``is_cpu`` False
(``conftest.cpu_tensors_as_device``), which makes them take it.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest

import steplog
from steplog import _arrays

from conftest import cpu_tensors_as_device

torch_dispatch = pytest.importorskip("torch.utils._python_dispatch")
TorchDispatchMode = torch_dispatch.TorchDispatchMode

torch = pytest.importorskip("torch", reason="torch is in the dev extra (torch==2.13.0, CPU)")
np = pytest.importorskip("numpy")

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]


@pytest.fixture(params=["host", "device-path"])
def path(request, monkeypatch):
    """Run a test on the CPU fast path and on the accelerator path (driven with CPU)."""
    if request.param == "device-path":
        cpu_tensors_as_device(monkeypatch)
    return request.param


def log_and_read(*records, **tracker_kwargs):
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem, **tracker_kwargs)
    tracker.init()
    for record in records:
        tracker.log(record)
    stats = tracker.finish()
    return mem, stats


def expected_kind(dtype):
    if dtype == torch.bool:
        return bool
    if dtype.is_floating_point:
        return float
    return int


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_dim_tensors_of_every_dtype_become_python_numbers(dtype, path):
    """A 0-d tensor is recorded as a Python number of the same kind (bool/int/float)."""
    value = torch.tensor(1, dtype=dtype)
    mem, _ = log_and_read({"v": value})
    recorded = mem.records[0].data["v"]
    assert type(recorded) is expected_kind(dtype)
    assert recorded == value.item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_tensors_of_every_dtype_become_nested_lists(dtype, path):
    """A small n-d tensor is recorded as nested lists with the element kind kept."""
    value = torch.arange(6).reshape(2, 3).to(dtype)
    mem, _ = log_and_read({"v": value})
    recorded = mem.records[0].data["v"]
    assert recorded == value.tolist()
    assert all(type(x) is expected_kind(dtype) for row in recorded for x in row)


def test_values_round_trip_through_jsonl_with_nan_and_inf(runs_root, path):
    """Tensor NaN/inf survive the JSONL round trip like plain floats."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init()
    tracker.log({"loss": torch.tensor(float("nan")), "v": torch.tensor([1.0, float("inf")])})
    tracker.finish()
    data = steplog.read_run(backend.path).records[0].data
    assert math.isnan(data["loss"])
    assert data["v"] == [1.0, math.inf]


def test_in_place_changes_after_log_are_not_recorded(path):
    """Accumulators changed in place after log() keep their per-step values."""
    acc = torch.zeros(())
    vec = torch.zeros(3)
    arr = np.zeros(2)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem)
    tracker.init()
    for _ in range(5):
        acc += 1
        vec.add_(1)
        arr += 1
        tracker.log({"acc": acc, "vec": vec, "arr": arr, "nested": {"in": [acc, arr]}})
    tracker.finish()
    assert mem.history["acc"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert mem.history["vec"] == [[float(s)] * 3 for s in range(1, 6)]
    assert mem.history["arr"] == [[float(s)] * 2 for s in range(1, 6)]
    assert [n["in"] for n in mem.history["nested"]] == [
        [float(s), [float(s)] * 2] for s in range(1, 6)
    ]


def test_requires_grad_tensors_are_detached(path):
    """Logged tensors never keep their autograd graph: what is queued is detached."""
    x = torch.ones(3, requires_grad=True)
    loss = (x * 2).sum()
    data = _arrays.snapshot({"loss": loss, "vec": x * 3}, max_array_size=1000)
    for value in data.values():
        sources = [value] if not isinstance(value, list) else value
        for item in sources:
            if isinstance(item, _arrays.Deferred):
                assert item.source.requires_grad is False
                assert item.source.grad_fn is None
    mem, _ = log_and_read({"loss": loss, "vec": x * 3})
    assert mem.records[0].data == {"loss": 6.0, "vec": [3.0, 3.0, 3.0]}


class CountOps(TorchDispatchMode):
    """Records every aten operation dispatched on this thread while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


#: Operations that copy data (a launch and a transfer each on an accelerator).
COPIES = ("aten.cat", "aten.stack", "aten.clone", "aten._to_copy", "aten.copy_")


def copies(ops: list[str]) -> list[str]:
    return [op for op in ops if op.startswith(COPIES)]


def test_fresh_device_tensors_cost_no_operation_in_log(monkeypatch, runs_root):
    """On the accelerator path, log() of fresh tensors dispatches no aten op at all:
    they are kept by reference (with their version), not detached, stacked or copied."""
    cpu_tensors_as_device(monkeypatch)
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(jsonl)
    tracker.init()
    metrics = [
        {"loss": torch.tensor(0.5 * i), "acc": torch.tensor(i), "vec": torch.arange(3.0) + i}
        for i in range(50)
    ]
    with CountOps() as counted:
        for data in metrics:
            tracker.log(data)
    assert counted.ops == []
    tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert run.history["loss"] == [0.5 * i for i in range(50)]
    assert run.history["acc"] == list(range(50))
    assert run.history["vec"] == [[float(i), i + 1.0, i + 2.0] for i in range(50)]


def test_tensors_already_changed_in_place_are_copied_at_the_call(monkeypatch):
    """An accumulator (changed in place before the call) is snapshotted at log(): one
    stack per call, device and dtype, as before; a fresh tensor beside it is not."""
    cpu_tensors_as_device(monkeypatch)
    acc = torch.zeros(())
    count = torch.zeros((), dtype=torch.int64)
    acc += 1
    count += 1
    with CountOps() as counted:
        snap = _arrays.snapshot(
            {"acc": acc, "acc2": acc * 2 + 0, "count": count, "fresh": torch.tensor(1.0)},
            max_array_size=1000,
        )
    # acc*2+0 is computed outside log() in real code; only log()'s own copies count here
    own = [op for op in copies(counted.ops) if op.startswith("aten.stack")]
    assert len(own) == 2  # float32 accumulators stacked together, the int64 one apart
    kinds = {d.key: d.kind for d in _arrays.pop_deferred([(0, 0.0, snap)])}
    assert kinds["fresh"] == "ref"
    assert kinds["acc"] == kinds["count"] == "scalar"


def test_the_writer_reads_a_batch_with_a_constant_number_of_copies(monkeypatch):
    """Reading back N events' tensors costs one gather per device and dtype, not N."""
    cpu_tensors_as_device(monkeypatch)
    counts = []
    for n in (10, 1_000):
        rows = []
        for i in range(n):
            data = _arrays.snapshot(
                {"loss": torch.tensor(float(i)), "step": torch.tensor(i), "v": torch.ones(2) * i},
                max_array_size=1000,
            )
            rows.append((i, 0.0, data))
        placeholders = _arrays.pop_deferred(rows)
        stats = _arrays.ResolveStats()
        with CountOps() as counted:
            _arrays.resolve(placeholders, stats, max_array_size=1000)
        counts.append(len(copies(counted.ops)))
        assert [data["loss"] for _, _, data in rows] == [float(i) for i in range(n)]
        assert [data["step"] for _, _, data in rows] == list(range(n))
        assert rows[-1][2]["v"] == [float(n - 1)] * 2
    # float32 (0-d stacked, n-d concatenated behind them) and int64: a few gathers,
    # the same number for 10 events as for 1 000.
    assert counts[0] == counts[1] <= 3


def test_a_tensor_changed_after_log_is_recorded_as_changed(monkeypatch, runs_root, caplog):
    """A fresh tensor changed in place after log() and before the writer read it is
    never recorded silently with the later value: it is marked, counted and warned."""
    cpu_tensors_as_device(monkeypatch)
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(jsonl, flush_interval=5.0)
    tracker.init()
    loss = torch.tensor(1.0)
    tracker.log({"loss": loss, "ok": torch.tensor(2.0)})
    loss.add_(10)  # the writer has not read it yet (flush_interval 5 s)
    with caplog.at_level(logging.WARNING, logger="steplog"):
        stats = tracker.finish()
    data = steplog.read_run(jsonl.path).records[0].data
    assert data == {"loss": {"$changed": 11.0}, "ok": 2.0}
    assert stats.changed_values == 1
    assert any("'loss'" in r.getMessage() and "clone()" in r.getMessage() for r in caplog.records)


def test_nested_structures_at_any_depth(path):
    """Tensors and arrays inside lists, tuples and dicts are found and converted."""
    mem, _ = log_and_read(
        {
            "a": [torch.tensor(1.5), {"b": torch.tensor([1, 2])}],
            "c": (np.array([[1, 2]], dtype=np.int16), np.float32(0.5)),
            "d": {"e": {"f": [np.bool_(True), torch.tensor(True)]}},
        }
    )
    assert mem.records[0].data == {
        "a": [1.5, {"b": [1, 2]}],
        "c": [[[1, 2]], 0.5],
        "d": {"e": {"f": [True, True]}},
    }


def test_large_tensors_and_arrays_are_summarised_with_one_warning_per_key(caplog, path):
    """Above max_array_size a value is recorded as shape/dtype/numel/mean/min/max, reported once."""
    big = torch.arange(100, dtype=torch.float32)
    with caplog.at_level(logging.WARNING, logger="steplog"):
        mem, _ = log_and_read(
            {"t": big, "a": np.arange(50)}, {"t": big, "a": np.arange(50)}, max_array_size=10
        )
    t = mem.records[0].data["t"]["$summary"]
    assert t == {
        "shape": [100],
        "dtype": "float32",
        "numel": 100,
        "mean": 49.5,
        "min": 0.0,
        "max": 99.0,
    }
    a = mem.records[0].data["a"]["$summary"]
    assert (a["shape"], a["numel"], a["mean"], a["min"], a["max"]) == ([50], 50, 24.5, 0.0, 49.0)
    messages = [r.getMessage() for r in caplog.records if "max_array_size" in r.getMessage()]
    assert len(messages) == 2  # one per key, not per event


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.bfloat16], ids=str)
def test_large_tensor_summaries_for_integer_bool_and_half_dtypes(dtype, path):
    """Summaries work for every dtype kind (bool counts as 0/1)."""
    value = (torch.arange(20) % 2).to(dtype)
    mem, _ = log_and_read({"t": value}, max_array_size=10)
    summary = mem.records[0].data["t"]["$summary"]
    assert summary["numel"] == 20
    assert (summary["mean"], summary["min"], summary["max"]) == (0.5, 0.0, 1.0)
    assert summary["dtype"] == str(dtype).removeprefix("torch.")


def test_snapshot_false_keeps_references_and_still_converts(monkeypatch):
    """snapshot=False stores device tensors as references (no copy, no launch); the
    writer converts them. (Host values are read at the call: that is their snapshot.)"""
    cpu_tensors_as_device(monkeypatch)  # CPU tensors take the device path
    vec = torch.zeros(2)
    gate = GateMemory()
    tracker = steplog.Tracker(gate, snapshot=False)
    tracker.init()
    tracker.log({"vec": vec, "x": torch.tensor(2.5)})
    vec.add_(1)  # the caller broke its promise: the change shows
    gate.open_gate()
    tracker.finish()
    assert gate.records[0].data == {"vec": [1.0, 1.0], "x": 2.5}


class GateMemory(steplog.MemoryBackend):
    """A memory backend that holds the first write until opened."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self._event = threading.Event()

    async def write(self, events):
        import anyio

        while not self._event.is_set():
            await anyio.sleep(0.005)
        await super().write(events)

    def open_gate(self) -> None:
        self._event.set()


def test_summary_and_config_tensors_are_converted(runs_root):
    """Tensors and arrays in the config and the summary are stored as plain values."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    info = tracker.init({"lr": torch.tensor(0.5), "mask": np.array([1, 0])})
    assert info.config == {"lr": 0.5, "mask": [1, 0]}
    tracker.finish({"best": torch.tensor([1.0, 2.0])})
    run = steplog.read_run(backend.path)
    assert run.config == {"lr": 0.5, "mask": [1, 0]}
    assert run.summary == {"best": [1.0, 2.0]}


def test_jax_arrays_are_converted():
    """jax arrays (0-d, n-d, bfloat16) are read back in one device_get per batch."""
    jnp = pytest.importorskip("jax.numpy", reason="jax is in the dev extra")
    mem, _ = log_and_read(
        {
            "s": jnp.asarray(1.5),
            "v": jnp.arange(3),
            "b": jnp.asarray([1.0, 2.0], dtype=jnp.bfloat16),
            "flag": jnp.asarray(True),
        }
    )
    assert mem.records[0].data == {"s": 1.5, "v": [0, 1, 2], "b": [1.0, 2.0], "flag": True}


def test_steplog_does_not_import_array_libraries():
    """Importing and using steplog imports neither torch, numpy nor jax."""
    code = (
        "import sys, steplog\n"
        "t = steplog.Tracker(steplog.MemoryBackend())\n"
        "t.init({'a': 1})\n"
        "t.log({'loss': 0.5, 'nested': [1, {'x': 2.0}]})\n"
        "t.finish()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# torch >= 2.11 says set_sync_debug_mode is a prototype feature: not our concern here.
@pytest.mark.filterwarnings("ignore:.*prototype:UserWarning")
def test_cuda_loop_never_synchronises_on_the_hot_path():
    """Under sync debug mode "error", logging CUDA tensors never syncs; values are per step."""
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem, batch_size=64)
    tracker.init()
    acc = torch.zeros((), device="cuda")
    vec = torch.zeros(4, device="cuda")
    expected = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(500):
            loss = torch.rand((), device="cuda")
            acc += loss
            vec += 1
            step_t = torch.full((), step, device="cuda", dtype=torch.int64)  # no host copy
            tracker.log({"loss": loss, "acc": acc, "vec": vec, "i": step_t})
            expected.append((loss, acc.clone(), step))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    stats = tracker.finish()
    for event, (loss, acc_value, step) in zip(mem.records, expected, strict=True):
        assert event.data["loss"] == loss.item()
        assert event.data["acc"] == acc_value.item()
        assert event.data["vec"] == [float(step + 1)] * 4
        assert event.data["i"] == step
    assert 1 <= stats.device_syncs <= stats.batches


def test_tensor_subclasses_are_recognised(path):
    """Parameters and tensor subclasses from other packages are tensors too."""

    class Tagged(torch.Tensor):
        pass

    Tagged.__module__ = "some_other_package.tensors"
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    tagged = torch.tensor([3.0]).as_subclass(Tagged)
    mem, _ = log_and_read({"w": weight, "t": tagged})
    assert mem.records[0].data == {"w": [1.0, 2.0], "t": [3.0]}


def test_an_unreadable_tensor_costs_only_its_own_value(monkeypatch, runs_root, caplog):
    """A source that cannot be read (e.g. a CUDA-graph output a replay overwrote) does not
    stop the batch: the others are read one by one, it records the error."""
    cpu_tensors_as_device(monkeypatch)

    class Unreadable(torch.Tensor):
        def tolist(self):
            raise RuntimeError("overwritten by a subsequent run")

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.stack, torch.cat):
                raise RuntimeError("overwritten by a subsequent run")
            return super().__torch_function__(func, types, args, kwargs or {})

    bad = torch.tensor(3.0).as_subclass(Unreadable)
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(jsonl)
    tracker.init()
    with caplog.at_level(logging.WARNING, logger="steplog"):
        for i in range(20):
            tracker.log({"i": torch.tensor(i), "bad": bad} if i == 7 else {"i": torch.tensor(i)})
        tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert run.history["i"] == list(range(20))
    assert "overwritten" in run.records[7].data["bad"]


def test_a_meta_tensor_costs_only_its_own_value(runs_root):
    """torch.empty(2, device="meta") has no data to copy: that value becomes a marker,
    the writer lives on and every other event, before and after, is recorded."""
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(jsonl)
    tracker.init()
    for i in range(100):
        value = torch.empty(2, device="meta") if i == 50 else torch.tensor(float(i))
        tracker.log({"i": i, "x": value})
    stats = tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert stats.written == len(run.records) == 100
    assert "unreadable" in run.records[50].data["x"]
    assert [e.data["x"] for e in run.records if e.step != 50] == [
        float(i) for i in range(100) if i != 50
    ]


def test_a_numpy_still_being_imported_by_another_thread_is_left_alone(monkeypatch):
    """While another thread imports numpy, sys.modules already holds the half-made
    module (no sctypeDict yet): the writer's check must neither fail on it (which
    killed the writer thread) nor learn an empty set of scalar types for good."""
    import importlib.machinery
    import types

    from steplog import _arrays

    half = types.ModuleType("numpy")
    half.__spec__ = importlib.machinery.ModuleSpec("numpy", None)
    half.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "numpy", half)
    monkeypatch.setattr(_arrays, "_numpy_seen", False)
    monkeypatch.setattr(_arrays, "_plain", _arrays._BASE_PLAIN)
    assert _arrays.libraries_loaded()
    assert not _arrays._numpy_seen
    monkeypatch.setitem(sys.modules, "numpy", np)  # the import has finished
    _arrays.libraries_loaded()
    assert _arrays._numpy_seen and np.float32 in _arrays.plain_types()
