"""The delivery process: remote backends' lanes outside the logging process (issue #23).

Each test runs real processes: the backend moves to the delivery process pickled, and
records what it gets in files (conftest.FileRecorder), which the test reads back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import steplog
from steplog._lane import delivery_states

from conftest import FileRecorder, run_steplog, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")

TESTS = str(Path(__file__).parent)

# A training job whose remote backend is a FileRecorder; it SIGKILLs itself after
# logging (nothing flushed, finish() never called).
KILLED_JOB = """
import os, sys, steplog
sys.path.insert(0, sys.argv[4])
from conftest import FileRecorder
root, out, durability = sys.argv[1:4]
tracker = steplog.Tracker(
    steplog.JsonlBackend(root), FileRecorder(out), experiment_name="d", durability=durability
)
info = tracker.init()
print(info.run_id, os.getpid(), flush=True)
for step in range(20_000):
    tracker.log({"loss": 1.0 / (step + 1)})
os.kill(os.getpid(), 9)
"""


def _delivery_processes(parent: int) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", "_delivery_process"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["thread", "process"])
def test_a_killed_process_s_events_reach_the_remote_backend(tmp_path, durability):
    """SIGKILL of the logging process right after logging (nothing flushed): its
    delivery process delivers every event the file holds, closes the remote run as
    'killed', records it in the cursor, and exits by itself."""
    out = tmp_path / "out"
    job = subprocess.Popen(
        [sys.executable, "-c", KILLED_JOB, str(tmp_path / "runs"), str(out), durability, TESTS],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "STEPLOG_ROOT"},
    )
    assert job.stdout is not None
    run_id, _ = job.stdout.readline().split()
    job.stdout.close()
    assert job.wait(timeout=60) == -signal.SIGKILL
    recorder = FileRecorder(out)
    path = tmp_path / "runs" / "d" / f"{run_id}.jsonl"
    assert wait_until(lambda: recorder.ends(), timeout=60), "the remote run was never closed"
    run = steplog.read_run(path)
    assert recorder.steps() == [e.step for e in run.records] and len(run.records) > 0
    (end,) = recorder.ends()
    assert end[1] == "killed"
    # It ran in another process than the killed one, which is gone; it left by itself.
    opened_in = int((out / "opens").read_text().split()[0])
    assert wait_until(lambda: not _alive(opened_in), timeout=30)
    (state,) = delivery_states(path, len(run.records))
    assert (state.behind, state.ended, state.status) == (0, True, "killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_the_loop_pays_nothing_for_a_slow_remote_backend_and_it_gets_everything(tmp_path):
    """A remote backend taking 20 ms a write moves to the delivery process: the loop logs
    at full speed, finish() waits for it, it gets every event once, in order, and the
    object the user holds gets its public state back (where it opened)."""
    recorder = FileRecorder(tmp_path / "out", delay=0.02)
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path / "runs"), recorder, batch_size=64)
    tracker.init()
    started = time.monotonic()
    for step in range(20_000):
        tracker.log({"loss": float(step)})
    logging = time.monotonic() - started
    stats = tracker.finish()
    assert recorder.steps() == list(range(20_000))
    got = stats.backends["recorder"]
    assert (got.delivered, got.failed, got.missing) == (20_000, 0, 0)
    assert recorder.opened_in not in (None, os.getpid())  # mirrored back from there
    assert logging < 20_000 / (4 * 64) * 0.02  # less than one slow write per batch


def test_backends_that_cannot_move_run_in_a_thread(tmp_path):
    """A backend that says movable=False, and one that does not pickle, run their lanes
    in this process, beside one that moved; all three get every event."""

    class Local(steplog.MemoryBackend):  # a class the delivery process cannot load
        local = False
        name = "unpicklable"

    stays = FileRecorder(tmp_path / "stays")
    stays.movable = False
    stays.name = "stays"
    moves = FileRecorder(tmp_path / "moves")
    unpicklable = Local()
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path / "runs"), stays, moves, unpicklable)
    tracker.init()
    for step in range(500):
        tracker.log({"x": step})
    stats = tracker.finish()
    assert stays.steps() == moves.steps() == list(range(500))
    assert [e.step for e in unpicklable.records] == list(range(500))
    assert stays.opened_in == os.getpid() and moves.opened_in != os.getpid()
    assert all(stats.backends[n].delivered == 500 for n in ("stays", "recorder", "unpicklable"))


def test_a_finish_deadline_leaves_the_rest_to_the_background_and_it_arrives(tmp_path):
    """finish(timeout=0.5) with a slow remote backend returns by its deadline, counts the
    events it had not got as missing (the file has them); the delivery process goes on
    in the background, and the backend ends with every event and the run end."""
    recorder = FileRecorder(tmp_path / "out", delay=0.05)
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path / "runs"), recorder, batch_size=16)
    tracker.init()
    for step in range(3_000):
        tracker.log({"x": step})
    started = time.monotonic()
    stats = tracker.finish(timeout=0.5)
    assert time.monotonic() - started < 8
    got = stats.backends["recorder"]
    assert got.missing > 0 and got.delivered + got.missing == 3_000
    assert wait_until(lambda: recorder.ends(), timeout=60)
    assert recorder.steps() == list(range(3_000))
    assert recorder.ends()[-1][1] == "finished"


@pytest.mark.slow
def test_a_fork_does_not_keep_the_delivery_process_waiting(tmp_path):
    """A forked child of the logging process (a DataLoader worker) lets go of the
    delivery process's socket: when the parent is killed, the delivery process still
    sees it and finishes the run, while the child lives on."""
    script = """
import os, sys, time, steplog
sys.path.insert(0, sys.argv[3])
from conftest import FileRecorder
tracker = steplog.Tracker(
    steplog.JsonlBackend(sys.argv[1]), FileRecorder(sys.argv[2]), experiment_name="d"
)
tracker.init()
for step in range(1_000):
    tracker.log({"x": step})
tracker.flush()
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    time.sleep(30)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), 9)
"""
    out = tmp_path / "out"
    job = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "runs"), str(out), TESTS],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert job.stdout is not None
    child = int(job.stdout.readline())
    job.stdout.close()
    try:
        assert job.wait(timeout=60) == -signal.SIGKILL
        recorder = FileRecorder(out)
        assert wait_until(lambda: recorder.ends(), timeout=30)
        assert recorder.steps() == list(range(1_000))
        assert recorder.ends()[0][1] == "killed"
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_a_resume_goes_on_where_the_killed_process_s_delivery_stopped(tmp_path):
    """The backend is down when the job is killed, and its delivery process dies too (a
    node reboot): the cursor stays where the backend stopped. The resumed run's lane
    sends what the killed process never delivered first, then the new segment: every
    step once, in order, and steplog show says it is all there."""
    from steplog.runfile.lock import holders

    out = tmp_path / "out"
    out.mkdir()
    (out / "down").touch()
    env = {k: v for k, v in os.environ.items() if k != "STEPLOG_ROOT"}
    job = subprocess.run(
        [sys.executable, "-c", KILLED_JOB, str(tmp_path / "runs"), str(out), "thread", TESTS],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert job.returncode == -signal.SIGKILL
    run_id = job.stdout.split()[0]
    path = tmp_path / "runs" / "d" / f"{run_id}.jsonl"
    (lock,) = path.parent.glob(f"{path.name}.sync-recorder-*.json.lock")
    (delivery,) = holders(lock) or []  # the delivery process, still trying
    os.kill(delivery.pid, signal.SIGKILL)
    assert wait_until(lambda: not _alive(delivery.pid), timeout=30)
    recorder = FileRecorder(out)
    assert recorder.steps() == []
    (out / "down").unlink()
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path / "runs"), recorder, experiment_name="d"
    )
    tracker.init(resume=run_id)
    for _ in range(100):
        tracker.log({"loss": 0.0})
    stats = tracker.finish()
    run = steplog.read_run(path)
    killed_kept = run.segments[1].first_step  # what the killed process's file held
    assert recorder.steps() == [e.step for e in run.records] == list(range(killed_kept + 100))
    got = stats.backends["recorder"]
    assert (got.delivered, got.caught_up, got.missing) == (100, killed_kept, 0)
    shown = run_steplog("show", str(path))
    assert shown.returncode == 0, shown.stderr
    total = killed_kept + 100
    assert f"recorder  {total:,} delivered · up to date · run end delivered (finished)" in (
        shown.stdout
    )


def test_steplog_show_says_a_backend_is_behind_and_how_to_send_the_rest(tmp_path):
    """A backend down to the end of the run: show lists it behind, with the command that
    sends the rest; a sync then does, from the same cursor."""
    from steplog.sync import sync

    out = tmp_path / "out"
    out.mkdir()
    (out / "down").touch()
    recorder = FileRecorder(out)
    recorder.movable = False  # so that the test decides when it is back
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path / "runs"),
        recorder,
        shutdown_timeout=0.3,
        retry=steplog.RetryPolicy(retries=0, backoff=0.001),
    )
    tracker.init()
    for step in range(300):
        tracker.log({"x": step})
    tracker.finish()
    path = tracker.backends[0].path
    shown = run_steplog("show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "recorder  0 delivered · 300 behind" in shown.stdout
    assert "steplog sync" in shown.stdout
    (out / "down").unlink()
    result = sync(path, recorder)
    assert result.ended and recorder.steps() == list(range(300))
    (state,) = delivery_states(path, 300)
    assert (state.delivered, state.behind, state.ended) == (300, 0, True)
