"""System metrics (``Tracker(system_metrics=)``): samples taken by the writer thread,
stored as their own records, read back, shown and plotted."""

from __future__ import annotations

import importlib.util
import json
import logging
import resource
import subprocess
import sys
import textwrap
import time

import pytest

import steplog

from conftest import run_steplog

pytestmark = pytest.mark.timeout(120)


def sampled_run(root, seconds: float, *, busy: bool = False, **kwargs) -> tuple[steplog.Run, int]:
    backend = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(backend, system_metrics=0.05, flush_interval=0.02, **kwargs)
    tracker.init()
    logged = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tracker.log({"loss": 1.0})
        logged += 1
        if not busy:
            time.sleep(0.005)
    tracker.finish()
    return steplog.read_run(backend.path), logged


def test_samples_are_their_own_records_with_cpu_rss_and_steps_per_second(runs_root):
    """Samples hold cpu_percent, rss_mb and steps_per_s, in time order, with the count
    of events logged by then; step records never carry them."""
    run, logged = sampled_run(runs_root, 0.4)
    assert len(run.system) >= 2  # periodic samples plus the last one at finish()
    assert [s.time for s in run.system] == sorted(s.time for s in run.system)
    assert [s.events for s in run.system] == sorted(s.events for s in run.system)
    assert run.system[-1].events == logged
    for sample in run.system:
        assert set(sample.data) == {"cpu_percent", "rss_mb", "steps_per_s"}
        assert sample.data["cpu_percent"] >= 0 and sample.data["steps_per_s"] >= 0
    # /proc/self/statm's current RSS is at most the peak the kernel reports.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 1 < run.system[-1].data["rss_mb"] <= peak_mb + 1
    assert max(s.data["steps_per_s"] for s in run.system) > 0
    assert all(set(e.data) == {"loss"} for e in run.records)
    assert len(run.records) == logged
    assert run.system_series("rss_mb")[-1] == (run.system[-1].time, run.system[-1].data["rss_mb"])


def test_cpu_percent_tells_a_busy_loop_from_a_sleeping_one(runs_root):
    """A loop that computes shows far more CPU than one that sleeps."""
    busy, _ = sampled_run(runs_root, 0.4, busy=True)
    idle, _ = sampled_run(runs_root, 0.4)
    assert max(s.data["cpu_percent"] for s in busy.system) > 2 * min(
        s.data["cpu_percent"] for s in idle.system if "cpu_percent" in s.data
    )


def test_without_system_metrics_there_are_no_samples(runs_root):
    """Off by default: no monitor, no system records."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init()
    assert tracker._run is not None and tracker._run.writer.monitor is None
    tracker.log({"loss": 1.0})
    tracker.finish()
    assert steplog.read_run(backend.path).system == []
    assert b'"system"' not in backend.path.read_bytes()


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "10", True])
def test_bad_system_metrics_values_fail_at_construction(value):
    """system_metrics takes positive seconds, None or False."""
    with pytest.raises(ValueError, match="system_metrics must be a positive number of seconds"):
        steplog.Tracker(system_metrics=value)


def test_false_and_none_turn_system_metrics_off():
    """``False`` and ``None`` mean off."""
    assert steplog.Tracker(system_metrics=False).system_metrics is None
    assert steplog.Tracker(system_metrics=None).system_metrics is None
    assert steplog.Tracker(system_metrics=2).system_metrics == 2.0


def test_without_a_gpu_driver_gpu_metrics_are_off_with_one_message(runs_root, caplog):
    """Here NVML cannot start (no driver): one log message, no gpu keys, the run goes on."""
    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("nvidia-ml-py is not installed (pip install 'steplog[gpu]')")
    with caplog.at_level(logging.INFO, logger="steplog"):
        run, _ = sampled_run(runs_root, 0.15)
    gpu_off = [r for r in caplog.records if "GPU metrics are off" in r.getMessage()]
    if not gpu_off:
        pytest.skip("NVML started: this machine has a GPU (see benchmarks/gpu_check.sh)")
    assert len(gpu_off) == 1
    assert not any(k.startswith("gpu") for s in run.system for k in s.data)


def run_python(code: str, cwd) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_without_nvidia_ml_py_the_message_names_the_extra(tmp_path):
    """No pynvml importable: GPU metrics are off and the log names steplog[gpu]."""
    out = run_python(
        """
        import logging, sys
        sys.modules["pynvml"] = None  # as if nvidia-ml-py were not installed
        logging.basicConfig(level=logging.INFO)
        import steplog
        t = steplog.Tracker(steplog.JsonlBackend("runs"), system_metrics=1.0)
        t.init(); t.log({"x": 1}); t.finish()
        """,
        tmp_path,
    )
    assert "pip install 'steplog[gpu]'" in out.stderr


# A stand-in for nvidia-ml-py, ONLY for the formatting path that needs a GPU and cannot
# run on this CPU machine; benchmarks/gpu_check.sh checks the real library on a GPU.
FAKE_PYNVML = """
class NVMLError(Exception):
    pass
class _Util:
    gpu = 87
class _Mem:
    used = 3 * 2**30
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return 2
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetUtilizationRates(h): return _Util()
def nvmlDeviceGetMemoryInfo(h): return _Mem()
def nvmlDeviceGetPowerUsage(h):
    if h == 1:
        raise NVMLError("Not Supported")
    return 312_500
"""


def test_gpu_metrics_are_recorded_per_device_with_a_stand_in_nvml(tmp_path):
    """Each device gets gpu<i>.util_percent, .mem_mb and .power_w (W); a metric a
    device does not report is left out, with one log message."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "pynvml.py").write_text(FAKE_PYNVML)
    out = run_python(
        """
        import json, logging, sys
        sys.path.insert(0, "fake")
        logging.basicConfig(level=logging.INFO)
        import steplog
        b = steplog.JsonlBackend("runs")
        t = steplog.Tracker(b, system_metrics=0.02, flush_interval=0.01)
        t.init()
        import time; time.sleep(0.1)
        t.log({"x": 1}); t.finish()
        print(json.dumps([s.data for s in steplog.read_run(b.path).system]))
        """,
        tmp_path,
    )
    samples = json.loads(out.stdout)
    assert len(samples) >= 2
    for data in samples:
        assert data["gpu0.util_percent"] == 87 and data["gpu1.util_percent"] == 87
        assert data["gpu0.mem_mb"] == 3072.0 and data["gpu1.mem_mb"] == 3072.0
        assert data["gpu0.power_w"] == 312.5
        assert "gpu1.power_w" not in data
    assert out.stderr.count("GPU metric gpu1.power_w is not available") == 1


def test_show_prints_the_system_metrics(runs_root):
    """``steplog show`` summarises each system metric (text and JSON)."""
    run, _ = sampled_run(runs_root, 0.15)
    text = run_steplog("show", str(run.path))
    assert text.returncode == 0, text.stderr
    samples = len(run.system)  # (one only when the machine is slow: "1 sample")
    assert f"system metrics ({samples} sample{'' if samples == 1 else 's'})" in text.stdout
    assert "rss_mb" in text.stdout and "cpu_percent" in text.stdout
    data = json.loads(run_steplog("show", str(run.path), "--json").stdout)
    assert data["system"]["rss_mb"]["count"] == len(run.system)
    assert data["system"]["rss_mb"]["last"] == run.system[-1].data["rss_mb"]


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="plots need steplog[plot]"
)
def test_plot_draws_system_keys(runs_root, tmp_path):
    """``steplog plot -k system.rss_mb`` draws the samples; a missing system key is an
    error that says so."""
    run, _ = sampled_run(runs_root, 0.15)
    out = tmp_path / "sys.png"
    cmd = ["plot", str(run.path), "-o", str(out)]
    done = run_steplog(*cmd, "-k", "system.rss_mb", "-k", "loss", "--x", "time")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = run_steplog(*cmd, "-k", "system.gpu0.util_percent")
    assert missing.returncode != 0
    assert "system.gpu0.util_percent" in missing.stderr
