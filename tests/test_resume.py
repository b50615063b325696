"""init(resume=...): a run continued after a crash, a pre-emption or a clean finish."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import steplog
from steplog.runfile.header import read_header, resume_point
from steplog.runfile.lock import holders
from steplog.runfile.snapshot import open_run

from conftest import run_steplog

# A training script as a user writes it for a pre-emptible job: the same command on
# every (re)start, resume="latest".
SCRIPT = """
import os, sys, steplog
root, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tracker = steplog.Tracker(
    steplog.JsonlBackend(root), experiment_name="job", flush_interval=0.01,
    durability=os.environ.get("DURABILITY", "thread"),
)
info = tracker.init({"lr": float(os.environ.get("LR", "0.1"))}, resume="latest")
first = info.resumed.step if info.resumed else 0
for step in range(first, steps):
    tracker.log({"loss": 1.0 / (step + 1), "step_seen": step})
    if step == kill_at:
        tracker.flush()
        os.kill(os.getpid(), 9)
tracker.summary["last"] = steps - 1
tracker.finish()
"""


def _job(root: Path, steps: int, kill_at: int = -1, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(steps), str(kill_at)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode


def _only_run(root: Path) -> Path:
    (path,) = (root / "job").glob("*.jsonl")
    return path


@pytest.mark.slow
def test_killed_job_resumed_twice_is_one_run_with_every_step_once(tmp_path: Path) -> None:
    """A job SIGKILLed twice and restarted with resume="latest" leaves one run file:
    every step once and in order, three segments, the last one finished."""
    assert _job(tmp_path, 3_000, kill_at=999) == -signal.SIGKILL
    assert _job(tmp_path, 3_000, kill_at=1_999) == -signal.SIGKILL
    assert _job(tmp_path, 3_000) == 0
    run = steplog.read_run(_only_run(tmp_path))
    assert [e.step for e in run.records] == list(range(3_000))
    assert [e.data["step_seen"] for e in run.records] == list(range(3_000))
    assert run.status == "finished"
    assert [s.status for s in run.segments] == ["incomplete", "incomplete", "finished"]
    assert [s.first_step for s in run.segments] == [0, 1_000, 2_000]
    assert run.summary == {"last": 2_999}
    assert run.stats is not None and run.stats.logged == 1_000  # the last segment's


def test_torn_last_line_is_cut_off_before_appending(tmp_path: Path) -> None:
    """The line a killed writer left half-written is cut off, and the new segment
    starts on a line of its own: the file reads strictly, with no corrupt line."""
    assert _job(tmp_path, 100, kill_at=49) == -signal.SIGKILL
    path = _only_run(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"step":50,"time":17')  # what a kill mid-write leaves
    assert open_run(path).torn
    assert _job(tmp_path, 100) == 0
    run = steplog.read_run(path)  # strict: raises on a corrupt line
    assert not run.torn
    assert [e.step for e in run.records] == list(range(100))
    assert b'"time":17{' not in path.read_bytes()


def test_process_durability_resumes_too(tmp_path: Path) -> None:
    """With the writer process (durability="process"), which ends a killed run as
    "killed" itself, a job restarted at once waits for that end and continues after
    it: never two writers on one file."""
    env = {"DURABILITY": "process"}
    assert _job(tmp_path, 500, kill_at=199, **env) == -signal.SIGKILL
    path = _only_run(tmp_path)
    # Restarted at once: the resume waits for the writer process to end the run.
    assert _job(tmp_path, 500, **env) == 0
    run = steplog.read_run(path)
    assert [e.step for e in run.records] == list(range(500))
    assert [s.status for s in run.segments] == ["killed", "finished"]


def test_resume_by_id_continues_a_finished_run_with_merged_config(tmp_path: Path) -> None:
    """A finished run resumed by its id goes on from its last step; the new config is
    merged over the old one and the summary carries over."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    info = tracker.init({"lr": 0.1, "model": "mlp"})
    for _ in range(10):
        tracker.log({"loss": 1.0})
    tracker.finish({"best": 0.5})
    again = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    resumed = again.init({"lr": 0.01}, resume=info.run_id)
    assert resumed.run_id == info.run_id
    assert resumed.resumed is not None
    assert (resumed.resumed.step, resumed.resumed.segment) == (10, 1)
    assert resumed.resumed.previous_status == "finished"
    assert again.summary == {"best": 0.5}
    again.log({"loss": 0.25})
    again.log({"loss": 0.125}, step=20)
    again.finish({"final": 0.125})
    run = steplog.read_run(tmp_path / "e" / f"{info.run_id}.jsonl")
    assert [e.step for e in run.records] == [*range(10), 10, 20]
    assert run.config == {"lr": 0.01, "model": "mlp"}
    assert run.summary == {"best": 0.5, "final": 0.125}
    assert [s.status for s in run.segments] == ["finished", "finished"]
    assert run.start_time == info.start_time
    header = read_header(open_run(run.path))
    assert (header.status, header.steps, header.segments) == ("finished", 21, 2)


def test_resume_by_path(tmp_path: Path) -> None:
    """A run file's path under the backend's root works as well as its id; a file
    elsewhere is refused with the reason."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path / "runs"), experiment_name="e")
    tracker.init()
    tracker.log({"x": 1})
    tracker.finish()
    path = tracker.backends[0].path  # type: ignore[attr-defined]
    info = tracker.init(resume=str(path))
    tracker.finish()
    assert info.resumed is not None and info.resumed.step == 1
    other = steplog.Tracker(steplog.JsonlBackend(tmp_path / "elsewhere"), experiment_name="e")
    with pytest.raises(ValueError, match="writes under"):
        other.init(resume=path)


def test_latest_without_a_run_starts_a_new_one(tmp_path: Path) -> None:
    """resume="latest" in an experiment with no run yet starts a new run: the first
    start of a job and its restarts run the same command."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="fresh")
    info = tracker.init(resume="latest")
    tracker.log({"x": 1})
    tracker.finish()
    assert info.resumed is None
    run = steplog.read_run(tracker.backends[0].path)  # type: ignore[attr-defined]
    assert [s.number for s in run.segments] == [0]


def test_latest_picks_the_most_recently_started_run(tmp_path: Path) -> None:
    """Of several runs, "latest" continues the one started last; once that one has
    finished, "latest" starts a new run (a new start of the job, not a restart), while
    its id still resumes it."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    ids = []
    for _ in range(3):
        ids.append(tracker.init().run_id)
        tracker.finish(status="failed")
    assert tracker.init(resume="latest").run_id == ids[-1]
    tracker.finish()  # now it finished
    fresh = tracker.init(resume="latest")
    tracker.finish()
    assert fresh.resumed is None and fresh.run_id not in ids
    assert tracker.init(resume=ids[-1]).resumed is not None
    tracker.finish()


def test_resume_takes_no_experiment_name(tmp_path: Path) -> None:
    """init(resume=NAME) with an experiment's name is an unknown run, not that experiment's
    last written run as on the command line: it could be finished, or another rank's
    (resume="latest" is the experiment's own latest run)."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    tracker.init()
    tracker.finish()
    with pytest.raises(steplog.RunNotFoundError, match="no run to resume: no run matches 'e'"):
        tracker.init(resume="e")


def test_bad_resume_requests_fail_at_init(tmp_path: Path) -> None:
    """An unknown run id, a non-run file, a tracker without a JSONL backend and a
    value of the wrong type fail in init() with a clear error, and start nothing."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    with pytest.raises(steplog.RunNotFoundError, match="no run to resume: no run matches 'nope'"):
        tracker.init(resume="nope")
    (tmp_path / "e").mkdir(exist_ok=True)
    (tmp_path / "e" / "junk.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(steplog.RunFileError, match="not a steplog run"):
        tracker.init(resume="junk")
    with pytest.raises(TypeError, match="resume must be"):
        tracker.init(resume=5)  # type: ignore[arg-type]
    memory = steplog.Tracker(steplog.MemoryBackend())
    with pytest.raises(ValueError, match=r"needs a steplog\.JsonlBackend"):
        memory.init(resume="latest")
    assert not tracker.active and not memory.active


def test_a_run_still_being_written_is_not_resumed(tmp_path: Path) -> None:
    """Resuming a run whose writer still runs on this host is refused: two processes
    must not write one file."""
    writer = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    info = writer.init()
    writer.log({"x": 1})
    writer.flush()
    other = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    with pytest.raises(steplog.RunFileError, match="still being written by process"):
        other.init(resume=info.run_id)
    writer.finish()


def test_a_resumed_run_being_written_shows_as_running(tmp_path: Path) -> None:
    """While a resumed run is written by a live process whose first writer is gone,
    readers report it running (the resume record names the writer), and a second
    resume is refused."""
    assert _job(tmp_path, 20, kill_at=9) == -signal.SIGKILL
    path = _only_run(tmp_path)
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="job")
    tracker.init(resume="latest")
    tracker.log({"loss": 0.1})
    tracker.flush()
    assert read_header(open_run(path)).status == "running"
    other = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="job")
    with pytest.raises(steplog.RunFileError, match=f"process {os.getpid()}"):
        other.init(resume="latest")
    tracker.finish()
    assert read_header(open_run(path)).status == "finished"


def test_async_tracker_resumes(tmp_path: Path) -> None:
    """AsyncTracker.init takes resume= as well."""
    import anyio

    async def main() -> steplog.RunInfo:
        tracker = steplog.AsyncTracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
        await tracker.init()
        tracker.log({"x": 1})
        await tracker.finish(status="interrupted")
        info = await tracker.init(resume="latest")
        tracker.log({"x": 2})
        await tracker.finish()
        return info

    info = anyio.run(main)
    assert info.resumed is not None and info.resumed.step == 1
    run = steplog.read_run(tmp_path / "e" / f"{info.run_id}.jsonl")
    assert [(e.step, e.data["x"]) for e in run.records] == [(0, 1), (1, 2)]


def test_replay_and_cli_read_a_resumed_run_as_one(tmp_path: Path) -> None:
    """replay sends every segment's steps with the last segment's status, and
    `steplog show` reports the segments' statuses."""
    assert _job(tmp_path, 200, kill_at=99) == -signal.SIGKILL
    assert _job(tmp_path, 200) == 0
    path = _only_run(tmp_path)
    memory = steplog.MemoryBackend()
    steplog.replay(path, memory)
    assert [e.step for e in memory.records] == list(range(200))
    assert memory.status == "finished"
    shown = run_steplog("show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "resumed   1 time: incomplete → finished" in shown.stdout


def test_resume_keeps_the_run_start_record_and_appends_only(tmp_path: Path) -> None:
    """The file is only appended to (after cutting a torn line): the bytes of the
    first segment are unchanged."""
    assert _job(tmp_path, 50, kill_at=49) == -signal.SIGKILL
    path = _only_run(tmp_path)
    before = path.read_bytes()
    assert _job(tmp_path, 80) == 0
    after = path.read_bytes()
    assert after.startswith(before)
    resume_line = after[len(before) :].split(b"\n")[0]
    assert resume_line.startswith(b'{"type":"resume"')


def test_run_context_manager_takes_resume(tmp_path: Path) -> None:
    """`with tracker.run(config, resume=...)` resumes as init() does."""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    with tracker.run({"a": 1}) as first:
        tracker.log({"x": 1})
    with tracker.run(resume=first.run_id) as again:
        tracker.log({"x": 2})
    assert again.run_id == first.run_id
    run = steplog.read_run(tmp_path / "e" / f"{first.run_id}.jsonl")
    assert [e.step for e in run.records] == [0, 1]
    assert [s.status for s in run.segments] == ["finished", "finished"]


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(path: Path, seconds: float, *, as_writer: bool = True) -> subprocess.Popen[str]:
    """Another process that holds the run file's writer lock for ``seconds``: one that
    passes for the writer process of a killed durability="process" run, draining it (a
    script of the writer process's name), or any other process (``as_writer=False``)."""
    script = path.parent / ("_ringchild.py" if as_writer else "holder.py")
    script.write_text(HOLD_LOCK)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


@pytest.mark.slow
def test_resume_waits_for_a_writer_process_that_still_holds_the_file(tmp_path: Path) -> None:
    """A run whose logging process is gone but whose file is still locked (its writer
    process draining) is resumed once the lock is free; one still locked after the
    wait is refused, and nothing is appended to it."""
    assert _job(tmp_path, 50, kill_at=9) == -signal.SIGKILL
    path = _only_run(tmp_path)
    holder = _hold_lock(path, 1.0)
    assert _job(tmp_path, 50) == 0  # waited for the holder, then resumed
    holder.wait(timeout=10)
    holder.stdout.close()  # type: ignore[union-attr]
    assert [e.step for e in steplog.read_run(path).records] == list(range(50))
    size = path.stat().st_size
    holder = _hold_lock(path, 30.0)
    try:
        with pytest.raises(
            steplog.RunFileError,
            match=rf"still being written by process {holder.pid} \(.*_ringchild.py",
        ):
            resume_point(path, wait=0.5)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert path.stat().st_size == size


def test_a_reused_process_id_does_not_block_a_resume(tmp_path: Path) -> None:
    """A killed run whose recorded writer pid is now another live process (a container's
    entrypoint has the same pid on every start) is resumed: nobody holds its lock."""
    assert _job(tmp_path, 30, kill_at=9) == -signal.SIGKILL
    path = _only_run(tmp_path)
    lines = path.read_bytes().split(b"\n", 1)
    start = json.loads(lines[0])
    start["pid"] = os.getpid()  # the pid this (live) process has
    path.write_bytes(json.dumps(start, separators=(",", ":")).encode() + b"\n" + lines[1])
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="job")
    info = tracker.init(resume="latest")
    tracker.finish()
    assert info.resumed is not None and info.resumed.step == 10


RANK_JOB = """
import os, sys, steplog
root, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="ddp", flush_interval=0.01)
info = tracker.init(resume="latest")
first = info.resumed.step if info.resumed else 0
for step in range(first, steps):
    tracker.log({"rank": info.rank, "step_seen": step})
    if step == kill_at:
        tracker.flush()
        os.kill(os.getpid(), 9)
tracker.finish()
"""


@pytest.mark.slow
def test_every_rank_resumes_its_own_run(tmp_path: Path) -> None:
    """Under torchrun every rank passes resume="latest": on the first start each rank
    starts its own run (even while the others are creating theirs), and after a kill
    each continues its own, never another rank's."""

    def start_ranks(kill_at: int) -> list[int]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RANK_JOB, str(tmp_path), "300", str(kill_at)],
                env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "4"},
            )
            for r in range(4)
        ]
        return [p.wait(timeout=60) for p in procs]

    assert start_ranks(kill_at=99) == [-signal.SIGKILL] * 4
    assert start_ranks(kill_at=199) == [-signal.SIGKILL] * 4
    assert start_ranks(kill_at=-1) == [0] * 4
    runs = [steplog.read_run(p) for p in (tmp_path / "ddp").glob("*.jsonl")]
    assert sorted(r.rank for r in runs) == [0, 1, 2, 3]
    for run in runs:
        assert [e.step for e in run.records] == list(range(300))
        assert {e.data["rank"] for e in run.records} == {run.rank}
        assert [s.status for s in run.segments] == ["incomplete", "incomplete", "finished"]


def test_show_and_compare_give_a_resumed_runs_config_as_it_stands(tmp_path: Path) -> None:
    """`steplog show` and `compare` report the config the run was resumed with (merged
    over the first one), as read_run does, not the first segment's."""
    assert _job(tmp_path, 20, kill_at=9, LR="0.1") == -signal.SIGKILL
    assert _job(tmp_path, 20, LR="0.2") == 0
    path = _only_run(tmp_path)
    assert steplog.read_run(path).config == {"lr": 0.2}
    shown = run_steplog("show", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["config"] == {"lr": 0.2}
    done = run_steplog("compare", str(path), str(path), "--all-config")
    assert done.returncode == 0, done.stderr
    compared = done.stdout
    assert next(line for line in compared.splitlines() if "config.lr" in line).split()[1:] == [
        "0.2",
        "0.2",
    ]


def test_scan_gives_a_resumed_runs_config_as_it_stands(tmp_path: Path) -> None:
    """steplog.scan() reports a resumed run's config as read_run, show and compare do:
    the resuming init()'s config merged over the first one, new keys included."""
    pytest.importorskip("pandas")
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    info = tracker.init({"lr": 0.1, "model": "mlp"})
    tracker.log({"loss": 1.0})
    tracker.finish()
    again = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    again.init({"lr": 0.2, "new": "z"}, resume=info.run_id)
    again.log({"loss": 0.5})
    again.finish()
    path = tmp_path / "e" / f"{info.run_id}.jsonl"
    expected = {"lr": 0.2, "model": "mlp", "new": "z"}
    assert steplog.read_run(path).config == expected
    frame = steplog.scan(path, keys=["loss"])
    assert list(frame["config.lr"]) == [0.2, 0.2]
    assert list(frame["config.new"]) == ["z", "z"]
    assert list(frame["config.model"]) == ["mlp", "mlp"]
    assert resume_point(path).config == expected


@pytest.mark.parametrize("durability", ["thread", "process"])
def test_a_killed_resumed_segment_keeps_the_runs_summary(tmp_path: Path, durability: str) -> None:
    """Finish a run with a summary, resume it, SIGKILL that process, resume again: the
    summary carries over from the last run end that had one — into tracker.summary,
    read_run, show and the final run end (in both durability modes)."""
    script = """
import os, sys, steplog
root, run_id, mode = sys.argv[1], sys.argv[2], sys.argv[3]
tracker = steplog.Tracker(
    steplog.JsonlBackend(root), experiment_name="e", flush_interval=0.01,
    durability=os.environ["DURABILITY"],
)
tracker.init(resume=run_id)
print(sorted(tracker.summary.items()), flush=True)
tracker.log({"loss": 0.25})
if mode == "kill":
    tracker.flush()
    os.kill(os.getpid(), 9)
tracker.finish({"final": 0.25})
"""
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="e")
    info = tracker.init()
    tracker.log({"loss": 1.0})
    tracker.finish({"best_loss": 0.5})
    path = tmp_path / "e" / f"{info.run_id}.jsonl"

    def resume(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, str(tmp_path), info.run_id, mode],
            env={**os.environ, "DURABILITY": durability},
            capture_output=True,
            text=True,
            timeout=60,
        )

    killed = resume("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout.strip() == "[('best_loss', 0.5)]"
    if durability == "process":  # the writer process ends the segment as "killed"
        for _ in range(200):
            if read_header(open_run(path)).ended:
                break
            time.sleep(0.05)
    # Between the resumes: the run as it stands still has its summary.
    assert steplog.read_run(path).summary == {"best_loss": 0.5}
    assert read_header(open_run(path)).summary == {"best_loss": 0.5}
    finished = resume("finish")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[('best_loss', 0.5)]"
    run = steplog.read_run(path)
    assert run.summary == {"best_loss": 0.5, "final": 0.25}
    assert [s.status for s in run.segments][-1] == "finished"
    assert [e.step for e in run.records] == [0, 1, 2]


FORKING_JOB = """
import os, sys, time, steplog
root, durability = sys.argv[1], sys.argv[2]
tracker = steplog.Tracker(
    steplog.JsonlBackend(root), experiment_name="job", flush_interval=0.01,
    durability=durability,
)
tracker.init(resume="latest")
for step in range(100):
    tracker.log({"loss": 1.0 / (step + 1)})
tracker.flush()
child = os.fork()
if child == 0:  # a DataLoader worker, a helper process: outlives its parent
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(60)
    os._exit(0)
with open(sys.argv[3], "w") as f:
    f.write(str(child))
os.kill(os.getpid(), 9)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("durability", ["thread", "process"])
def test_a_forked_child_that_outlives_a_killed_job_does_not_block_its_resume(
    tmp_path: Path, durability: str
) -> None:
    """os.fork() children inherit the run file's descriptor; a child that lives on after
    its parent was SIGKILLed must not keep the writer's lock: the restart resumes at
    once (before: it waited 10 s, then raised "still being written")."""
    child = tmp_path / "child.pid"
    job = subprocess.run(
        [sys.executable, "-c", FORKING_JOB, str(tmp_path), durability, str(child)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == -signal.SIGKILL, job.stderr
    path = _only_run(tmp_path)
    children = [h.pid for h in holders(path) or []]
    try:
        tracker = steplog.Tracker(
            steplog.JsonlBackend(tmp_path), experiment_name="job", durability=durability
        )
        started = time.monotonic()
        info = tracker.init(resume="latest")
        waited = time.monotonic() - started
        tracker.log({"loss": 0.0})
        tracker.finish()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child.read_text()), signal.SIGKILL)
    assert info.resumed is not None and info.resumed.step == 100
    assert waited < 5, waited  # a writer process drains in well under a second
    assert children == [] or durability == "process"  # only a draining writer process
    assert [e.step for e in steplog.read_run(path).records] == list(range(101))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names holders via /proc")
def test_a_lock_held_by_another_process_is_refused_at_once_naming_it(tmp_path: Path) -> None:
    """A killed run whose lock another process holds (not its writer: one that inherited
    the file where no fork hook could run) is refused at once, and the error names that
    process's pid and command line, so the user knows what to end."""
    assert _job(tmp_path, 30, kill_at=9) == -signal.SIGKILL
    path = _only_run(tmp_path)
    holder = _hold_lock(path, 30.0, as_writer=False)
    try:
        started = time.monotonic()
        with pytest.raises(steplog.RunFileError) as raised:
            steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="job").init(
                resume="latest"
            )
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    message = str(raised.value)
    assert f"process {holder.pid} (" in message and "holder.py" in message, message
    assert "end that process" in message
    assert waited < 2, waited
