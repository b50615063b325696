"""Process-level behaviour: SIGTERM ends runs as "terminated", forked children start clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import steplog

from conftest import run_script

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")


LOOP = """
import os, signal, sys, time, steplog
{setup}
tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="proc"{options})
tracker.init()
i = 0
while True:
    tracker.log({{"i": i}})
    i += 1
    if i == 1000:
        tracker.flush()
        print("ready", flush=True)
    if i > 1000:
        time.sleep(0.0005)
"""


def start(tmp_path: Path, setup: str = "", options: str = "") -> subprocess.Popen[str]:
    script = tmp_path / "loop.py"
    script.write_text(LOOP.format(setup=textwrap.dedent(setup), options=options))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def the_run(tmp_path: Path) -> steplog.Run:
    (path,) = (tmp_path / "runs").rglob("*.jsonl")
    return steplog.read_run(path)


def assert_gap_free(run: steplog.Run) -> None:
    assert run.history["i"] == list(range(len(run.records)))


def test_sigterm_finishes_the_run_as_terminated_and_the_process_dies_of_it(tmp_path):
    """SIGTERM: everything logged is written, status "terminated", exit by the signal."""
    proc = start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert "received SIGTERM" in err
    run = the_run(tmp_path)
    assert run.status == "terminated"
    assert len(run.records) >= 1000  # flushed before "ready"; SIGTERM may come at once
    assert_gap_free(run)
    assert run.stats is not None
    assert run.stats.logged == run.stats.written == len(run.records)


SEQUENCE = """
import signal, steplog
tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="proc")
for n in range(3):  # three runs in sequence, the first two finished
    tracker.init({"n": n})
    tracker.log({"i": 0})
    if n < 2:
        tracker.finish()
signal.raise_signal(signal.SIGTERM)
"""


def test_sigterm_ends_the_active_run_only_after_runs_in_sequence(tmp_path):
    """The hooks look after runs, not trackers: after a tracker ran runs in sequence,
    SIGTERM ends its active run once, and leaves the finished ones as they were."""
    (tmp_path / "seq.py").write_text(SEQUENCE)
    proc = subprocess.run(
        [sys.executable, "seq.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert proc.stderr.count("received SIGTERM") == 1
    runs = sorted(
        (steplog.read_run(p) for p in (tmp_path / "runs").rglob("*.jsonl")),
        key=lambda run: run.config["n"],
    )
    assert [run.status for run in runs] == ["finished", "finished", "terminated"]
    assert [len(run.records) for run in runs] == [1, 1, 1]


def test_sigterm_chains_the_users_own_handler(tmp_path):
    """A handler installed before init() still runs, after the run is finished."""
    setup = """
    def handler(signum, frame):
        print("user handler ran", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, handler)
    """
    proc = start(tmp_path, setup)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "user handler ran" in out
    run = the_run(tmp_path)
    assert run.status == "terminated"
    assert_gap_free(run)


def test_ignored_sigterm_stays_ignored(tmp_path):
    """With SIGTERM ignored, steplog installs nothing and the run goes on."""
    result = run_script(
        """
        import os, signal, steplog
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        tracker = steplog.Tracker(steplog.JsonlBackend("runs"))
        tracker.init()
        tracker.log({"i": 0})
        os.kill(os.getpid(), signal.SIGTERM)
        tracker.log({"i": 1})
        tracker.finish()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = the_run(tmp_path)
    assert run.status == "finished"
    assert run.history["i"] == [0, 1]


def test_handle_sigterm_false_leaves_the_default_action(tmp_path):
    """Opt-out: SIGTERM kills the process as usual; the run stays incomplete but readable."""
    proc = start(tmp_path, options=", handle_sigterm=False")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    run = the_run(tmp_path)
    assert run.status == "incomplete"
    assert len(run.records) >= 1000
    assert_gap_free(run)


FORK = """
import os, sys, steplog
tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="fork")
parent = tracker.init({"who": "parent"})
for i in range(100):
    tracker.log({"i": i})
pid = os.fork()
if pid == 0:
    try:
        tracker.log({"i": -1})
    except steplog.InactiveRunError as exc:
        print("child-inactive", "forked" in str(exc), flush=True)
    child = tracker.init({"who": "child"})
    for i in range(10):
        tracker.log({"child": i})
    tracker.finish()
    print("child-run", child.run_id, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
for i in range(100, 200):
    tracker.log({"i": i})
tracker.finish()
print("parent-run", parent.run_id, os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_clean_and_never_touches_the_parents_run(tmp_path):
    """After fork the child's tracker is inactive; its own run gets its own file."""
    result = run_script(FORK, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["child-inactive"] == "True"
    runs = {
        steplog.read_run(p).config["who"]: steplog.read_run(p)
        for p in (tmp_path / "runs").rglob("*.jsonl")
    }
    assert set(runs) == {"parent", "child"}
    assert runs["parent"].history["i"] == list(range(200))
    assert "child" not in runs["parent"].history
    assert runs["parent"].status == "finished"
    assert runs["child"].history["child"] == list(range(10))
    assert runs["child"].run_id != runs["parent"].run_id
    assert lines["parent-run"].endswith(" 0")  # the child exited cleanly
    assert lines["child-run"] == runs["child"].run_id


MULTIPROCESSING = """
import multiprocessing as mp, steplog

def work(rank):
    tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="mp")
    with tracker.run({"rank": rank}):
        for i in range(50):
            tracker.log({"rank": rank, "i": i})

if __name__ == "__main__":
    tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="mp")
    tracker.init({"rank": "parent"})
    tracker.log({"parent": 1})
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=work, args=(r,)) for r in range(3)]
    for p in procs: p.start()
    for p in procs: p.join()
    tracker.finish()
    print([p.exitcode for p in procs])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_multiprocessing_fork_workers_write_their_own_run_files(tmp_path):
    """Several forked workers logging the same experiment get one file each."""
    result = run_script(MULTIPROCESSING, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 0, 0]"
    runs = [steplog.read_run(p) for p in (tmp_path / "runs" / "mp").glob("*.jsonl")]
    assert len(runs) == 4
    by_rank = {r.config["rank"]: r for r in runs}
    assert by_rank["parent"].history == {"parent": [1]}
    for rank in range(3):
        assert by_rank[rank].history["i"] == list(range(50))
        assert by_rank[rank].status == "finished"


FULL_SPEED_SIGNAL = """
import os, signal, sys, threading, steplog
signal.signal(signal.SIGINT, signal.default_int_handler)  # CI may start us with it ignored
t = steplog.Tracker(steplog.JsonlBackend(sys.argv[1]), durability=sys.argv[2],
                    shutdown_timeout=30)
t.init()
t.summary["kept"] = 1
threading.Timer(0.3, lambda: os.kill(os.getpid(), int(sys.argv[3]))).start()
i = 0
try:
    while True:  # nothing but log(): the signal lands inside it most of the time
        t.log({"i": i})
        i += 1
except KeyboardInterrupt:
    t.finish(status="interrupted")
"""


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["thread", "process"])
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupted")]
)
def test_a_signal_inside_log_never_stalls_the_run_end(tmp_path, durability, signum, status):
    """SIGTERM or Ctrl-C while the loop does nothing but log(), so that it lands inside
    log()'s locked section (or the writer process's wake-up): the run end is written at
    once, with its status and summary, and the process ends (before: a stall of
    shutdown_timeout or more, the run 'incomplete' or 'killed'; a Ctrl-C there could
    leave the lock held and finish() hanging)."""
    for attempt in range(3):
        root = tmp_path / f"a{attempt}"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", FULL_SPEED_SIGNAL, str(root), durability, str(int(signum))],
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - started
        assert done.returncode in (-signal.SIGTERM, 0), done.stderr
        # shutdown_timeout=30, far above a slow start of the interpreter: never reached
        assert took < 30, (took, done.stderr)
        assert "could not be closed" not in done.stderr
        (path,) = root.rglob("*.jsonl")
        run = steplog.read_run(path)
        assert run.status == status and run.summary == {"kept": 1}
        assert [e.data["i"] for e in run.records] == list(range(len(run.records)))
