"""Arrays and tensors: snapshot at log() time, conversion in the worker (CPU in CI).

The accelerator path (stacking device scalars, placeholders read back per batch) is
exercised on CPU by turning ``_arrays._HOST_CPU`` off, which makes CPU tensors take it.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest

import steplog
from steplog import _arrays

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
        monkeypatch.setattr(_arrays, "_HOST_CPU", False)
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


def test_device_scalars_of_one_call_are_stacked_into_one_tensor(monkeypatch):
    """On the accelerator path, a call's 0-d tensors cost one stack (one launch), not one each."""
    monkeypatch.setattr(_arrays, "_HOST_CPU", False)
    stacks = []
    real_stack = torch.stack

    def counting_stack(tensors, *args, **kwargs):
        stacks.append(len(tensors))
        return real_stack(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "stack", counting_stack)
    data = {f"m{i}": torch.tensor(float(i)) for i in range(4)}
    data["count"] = torch.tensor(7)  # another dtype: its own stack
    snap = _arrays.snapshot(dict(data), max_array_size=1000)
    assert sorted(stacks) == [1, 4]
    sources = {id(d.source) for d in snap[_arrays.DEFER_KEY]}
    assert len(sources) == 2


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
    monkeypatch.setattr(_arrays, "_HOST_CPU", False)  # CPU tensors take the device path
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
