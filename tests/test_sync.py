"""steplog.sync / `steplog sync`: a run streamed into a backend as it grows, resumably.

The MLflow tests run against a real `mlflow server` (the session fixture of conftest)
and read everything back through MLflow's REST API, with the local run file as ground
truth; the others use backends that keep what they got in memory.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import steplog
from steplog.sync import SyncResume, cursor_path, sync

from conftest import find_run, history, run_steplog, wait_until

pytestmark = pytest.mark.timeout(120)


# ── helpers ──────────────────────────────────────────────────────────────────────────


def start_record(run_id: str, pid: int | None = None) -> dict:
    return {
        "type": "run_start", "schema": 1, "run_id": run_id, "experiment": "x",
        "start_time": time.time(), "pid": os.getpid() if pid is None else pid,
        "host": socket.gethostname(), "config": {"lr": 0.1},
    }  # fmt: skip


def step_lines(first: int, count: int) -> str:
    return "".join(
        json.dumps({"step": s, "time": 1000.0 + s, "data": {"loss": 1 / (s + 1), "s": f"t{s}"}})
        + "\n"
        for s in range(first, first + count)
    )


def end_line(run_id: str, status: str = "finished") -> str:
    end = {"type": "run_end", "run_id": run_id, "end_time": time.time(), "status": status,
           "summary": {"best": 0.5}, "stats": {"logged": 0}}  # fmt: skip
    return json.dumps(end) + "\n"


def hand_written(tmp_path: Path, steps: int, *, ended: bool, pid: int | None = None) -> Path:
    path = tmp_path / "run.jsonl"
    text = json.dumps(start_record("r1", pid)) + "\n" + step_lines(0, steps)
    path.write_text(text + (end_line("r1") if ended else ""))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Killed(BaseException):
    """Stands for the sync process being killed."""


class ServerLike(steplog.Backend):
    """A remote run that outlives the syncs: points keyed by step (stored once, as
    MLflow's database store does), every delivery counted, a kill after a given write."""

    name = "server"
    resend_last_step = True  # as MlflowBackend: a lane going on sends the last step again

    def __init__(self) -> None:
        self.points: dict[int, dict] = {}
        self.received: list[int] = []
        self.opens = 0
        self.writes = 0
        self.kill_after_write: int | None = None
        self.status: str | None = None
        self.summary: dict = {}

    async def open(self, run: steplog.RunInfo) -> None:
        self.opens += 1
        self.status = "running"

    async def write(self, events) -> None:
        for event in events:
            self.points[event.step] = event.data
            self.received.append(event.step)
        self.writes += 1
        if self.writes == self.kill_after_write:
            raise Killed  # the backend has the batch; the sync dies before its cursor moves

    async def close(self, end: steplog.RunEnd) -> None:
        self.status = end.status
        self.summary = dict(end.summary)


def local_points(path: Path) -> dict[int, dict]:
    return {e.step: e.data for e in steplog.read_run(path).records}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`steplog ARGS` in this process (see conftest.run_steplog)."""
    return run_steplog(*args)


def cursor_of(path: Path) -> dict:
    """The one sync cursor next to the run (as `steplog sync` names it), or {}."""
    found = list(path.parent.glob(f"{path.name}.sync-*.json"))
    assert len(found) <= 1, found
    try:
        return json.loads(found[0].read_text()) if found else {}
    except ValueError:  # cannot happen: the cursor is replaced atomically
        raise AssertionError(f"torn cursor {found[0]}") from None


# ── MLflow, through the command line ─────────────────────────────────────────────────

SLOW_WRITER = textwrap.dedent(
    """
    import os, sys, time, steplog
    root, experiment, release = sys.argv[1], sys.argv[2], sys.argv[3]
    jsonl = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init({"lr": 0.1, "model": {"layers": 12}})
    print(jsonl.path, flush=True)
    for i in range(3000):  # about 6 s
        tracker.log({"loss": 1.0 / (i + 1), "i": i, "phase": f"p{i // 1000}"})
        if i % 50 == 49:
            time.sleep(0.1)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)  # the run ends only once the test has killed its syncs
    tracker.finish({"best": 1.0 / 3000})
    """
)


def test_follow_of_a_live_writer_killed_and_restarted_twice_ends_equal_to_the_file(
    mlflow_server, tmp_path
):
    """`sync --follow` of a run another process is writing, SIGKILLed twice mid-run and
    restarted: the MLflow run holds every step exactly once with the file's values and
    times, the run's summary once, and ends FINISHED."""
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    release = tmp_path / "release"
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(tmp_path / "runs"), experiment, str(release)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    syncs: list[subprocess.Popen[str]] = []

    def start_sync() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steplog", "sync", str(path), "--to",
             mlflow_server.replace("http://", "mlflow://"), "--follow", "--interval", "0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        syncs.append(proc)
        return proc

    try:
        assert writer.stdout is not None
        path = Path(writer.stdout.readline().strip())
        kills = []
        for _ in range(2):
            before = cursor_of(path).get("events", 0)
            proc = start_sync()
            assert wait_until(lambda n=before: cursor_of(path).get("events", 0) > n, timeout=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills.append(cursor_of(path)["events"])
        release.touch()
        final = start_sync()
        out, err = final.communicate(timeout=60)
        assert writer.wait(timeout=60) == 0
    finally:
        for proc in [writer, *syncs]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert final.returncode == 0, err
    assert 0 < kills[0] < kills[1], kills  # each sync got somewhere before it was killed
    assert "has 3,000 events" in out and out.rstrip().endswith("run finished"), out

    local = steplog.read_run(path)
    assert local.status == "finished" and len(local.records) == 3000
    run = find_run(mlflow_server, experiment, local.run_id)
    assert run["info"]["status"] == "FINISHED"
    run_id = run["info"]["run_id"]
    for key in ("loss", "i"):
        points = history(mlflow_server, run_id, key)
        steps = collections.Counter(int(p["step"]) for p in points)
        assert len(points) == 3000 and set(steps.values()) == {1}, key
        remote = {(int(p["step"]), int(p["timestamp"]), float(p["value"])) for p in points}
        assert remote == {
            (e.step, int(e.time * 1000), float(e.data[key])) for e in local.records
        }, key
    best = history(mlflow_server, run_id, "summary/best")
    assert [(int(p["step"]), p["value"]) for p in best] == [(2999, 1.0 / 3000)]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["steplog.status"] == "finished"
    assert tags["phase"] == "p2"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"lr": "0.1", "model.layers": "12"}
    assert cursor_of(path)["ended"] is True


def test_a_second_sync_of_a_finished_run_sends_nothing(mlflow_server, tmp_path):
    """A sync without --follow of a finished run sends it and finishes the MLflow run;
    a second sync (here through the library, which finds the command's cursor) sends
    nothing and does not even open the backend."""
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init({"lr": 0.1})
    for i in range(1500):
        tracker.log({"loss": float(i)})
    tracker.finish({"best": 0.0})
    assert jsonl.path is not None
    first = run_cli("sync", str(jsonl.path), "--mlflow", mlflow_server)
    assert first.returncode == 0, first.stderr
    assert "has 1,500 events (1,500 sent now), run finished" in first.stdout

    again = sync(jsonl.path, steplog.MlflowBackend(mlflow_server))
    assert again.up_to_date and again.ended and again.sent == 0 and again.synced == 1500
    assert again.delivery.delivered == 0
    third = run_cli("sync", str(jsonl.path), "--mlflow", mlflow_server)
    assert third.returncode == 0, third.stderr
    assert "mlflow is up to date (1,500 events, run ended)" in third.stdout
    run = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    assert run["info"]["status"] == "FINISHED"
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted(float(p["value"]) for p in points) == [float(i) for i in range(1500)]


def test_a_synced_run_that_was_resumed_since_is_synced_on(mlflow_server, tmp_path):
    """A run synced to its end, then resumed (init(resume=...)) and finished again: the
    next sync sends the new segment into the same MLflow run, every step once, and the
    run ends FINISHED again."""
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init()
    for i in range(300):
        tracker.log({"loss": float(i)})
    tracker.finish(status="interrupted")
    assert sync(jsonl.path, steplog.MlflowBackend(mlflow_server)).ended
    tracker.init(resume="latest")
    for i in range(300, 500):
        tracker.log({"loss": float(i)})
    tracker.finish()
    again = sync(jsonl.path, steplog.MlflowBackend(mlflow_server))
    assert again.ended and not again.up_to_date and again.status == "finished"
    assert again.synced == 500
    run = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    assert run["info"]["status"] == "FINISHED"
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted((p["step"], p["value"]) for p in points) == [(i, float(i)) for i in range(500)]


class KilledMlflow(steplog.MlflowBackend):
    """MlflowBackend whose process "dies" right after MLflow took a given batch, or
    right after it finished the run: before the sync could move its cursor."""

    def __init__(self, url: str, *, after_write: int | None = None, after_close=False):
        super().__init__(url)
        self.after_write, self.after_close, self.writes = after_write, after_close, 0

    async def write(self, events) -> None:
        await super().write(events)
        self.writes += 1
        if self.writes == self.after_write:
            raise Killed

    async def close(self, end: steplog.RunEnd) -> None:
        await super().close(end)
        if self.after_close and end.status == "finished":
            self.after_close = False
            raise Killed


def test_mlflow_stores_once_what_a_killed_sync_sent_before_its_cursor_moved(
    mlflow_server, tmp_path
):
    """The two moments a kill makes a sync send something again — after MLflow took a
    batch, after MLflow finished the run — leave no duplicate: every step once, the
    summary once (at the last step), the run FINISHED."""
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init({"lr": 0.1})
    for i in range(600):
        tracker.log({"loss": float(i)})
    tracker.finish({"best": 0.0})
    path = jsonl.path
    assert path is not None
    with pytest.raises(Killed):
        sync(path, KilledMlflow(mlflow_server, after_write=3), batch_size=100)
    assert cursor_of(path)["events"] == 200
    with pytest.raises(Killed):
        sync(path, KilledMlflow(mlflow_server, after_close=True), batch_size=100)
    assert cursor_of(path)["events"] == 600 and cursor_of(path)["ended"] is False
    last = sync(path, steplog.MlflowBackend(mlflow_server))
    assert last.ended and last.status == "finished" and last.sent == 1  # the last step

    run = find_run(mlflow_server, experiment, steplog.read_run(path).run_id)
    assert run["info"]["status"] == "FINISHED"
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted(int(p["step"]) for p in points) == list(range(600))
    best = history(mlflow_server, run["info"]["run_id"], "summary/best")
    assert [(int(p["step"]), p["value"]) for p in best] == [(599, 0.0)]


LIVE_WRITER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    path = sys.argv[1]
    start = {"type": "run_start", "schema": 1, "run_id": sys.argv[2], "experiment": sys.argv[3],
             "start_time": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
             "config": {}}
    with open(path, "w") as f:
        f.write(json.dumps(start) + "\\n")
        for step in range(50):
            f.write(json.dumps({"step": step, "time": 1000.0 + step, "data": {"loss": step}})
                    + "\\n")
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_ctrl_c_stops_a_follow_and_a_later_sync_finishes_the_run(mlflow_server, tmp_path):
    """Ctrl-C ends `sync --follow` with exit 130, the cursor after what MLflow took and
    the MLflow run closed as unfinished (KILLED); once the run has ended, the next sync
    sends the rest and finishes it, every point once."""
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "live.jsonl"
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(path), "live-1", experiment],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    follower = None
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        follower = subprocess.Popen(
            [sys.executable, "-m", "steplog", "sync", str(path), "--mlflow", mlflow_server,
             "-f", "--interval", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert wait_until(lambda: cursor_of(path).get("events") == 50, timeout=30)
        time.sleep(0.3)
        assert follower.poll() is None  # the writer is alive: keep following
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    finally:
        writer.kill()
        writer.wait(timeout=30)
        assert writer.stdout is not None
        writer.stdout.close()
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait(timeout=30)
    assert follower.returncode == 130, err
    assert "Traceback" not in err
    assert cursor_of(path)["events"] == 50 and cursor_of(path)["ended"] is False
    run = find_run(mlflow_server, experiment, "live-1")
    assert run["info"]["status"] == "KILLED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["steplog.status"] == "unfinished"

    with path.open("a") as f:  # the run goes on (another writer) and ends
        f.write(
            "".join(
                json.dumps({"step": s, "time": 1000.0 + s, "data": {"loss": s}}) + "\n"
                for s in range(50, 80)
            )
            + end_line("live-1")
        )
    result = sync(path, steplog.MlflowBackend(mlflow_server))
    assert result.ended and result.status == "finished" and result.synced == 80
    assert result.sent == 31  # the 30 new steps, and the last one MLflow had, again
    run = find_run(mlflow_server, experiment, "live-1")
    assert run["info"]["status"] == "FINISHED"
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted(int(p["step"]) for p in points) == list(range(80))


# ── the library, with backends that keep what they got ────────────────────────────────


def test_a_sync_killed_after_the_backend_took_a_batch_resumes_without_loss(tmp_path):
    """Killed after the backend took a batch but before the cursor moved: the cursor
    stays after the last batch it recorded, and the next sync sends the rest plus
    that batch again (and the last step before it), which a backend keyed by step
    stores once: in the end it holds exactly the file, closed with the run's status."""
    path = hand_written(tmp_path, 1000, ended=True)
    server = ServerLike()
    server.kill_after_write = 3
    where = tmp_path / "cursor.json"
    with pytest.raises(Killed):
        sync(path, server, batch_size=100, cursor=where, resume=SyncResume.CONTINUE)
    assert json.loads(where.read_text())["events"] == 200
    assert server.status == "unfinished"  # closed as unfinished on the way out

    result = sync(path, server, batch_size=100, cursor=where, resume=SyncResume.CONTINUE)
    assert result.ended and result.status == "finished" and result.synced == 1000
    assert result.sent == 801  # steps 199-999
    assert server.points == local_points(path)
    assert server.status == "finished" and server.summary == {"best": 0.5}
    twice = {step for step, n in collections.Counter(server.received).items() if n > 1}
    assert twice == set(range(199, 300))
    assert server.opens == 2


def test_without_follow_a_live_run_is_sent_so_far_and_finished_by_a_later_sync(tmp_path):
    """Without follow, a sync sends what the file holds (a torn last line left out) and
    leaves the run unfinished; once the run has ended, the next sync finishes it. A
    MemoryBackend starts over when reopened, so the next sync sends the whole run."""
    path = hand_written(tmp_path, 30, ended=False)
    with path.open("a") as f:
        f.write('{"step": 30, "ti')  # the writer is in the middle of a line
    memory = steplog.MemoryBackend()
    first = sync(path, memory)
    assert (first.synced, first.sent, first.status, first.ended) == (30, 30, "unfinished", False)
    assert memory.status == "unfinished" and len(memory.records) == 30

    with path.open("a") as f:
        f.write('me": 1030.0, "data": {"loss": 0.1}}\n' + step_lines(31, 9) + end_line("r1"))
    second = sync(path, memory)
    assert (second.synced, second.sent, second.status, second.ended) == (40, 40, "finished", True)
    assert [e.step for e in memory.records] == list(range(40))
    assert memory.status == "finished" and memory.summary == {"best": 0.5}


def test_a_last_record_read_before_its_newline_is_resumed_after(tmp_path):
    """A whole last record without its newline counts as complete (the snapshot rule);
    when the newline and more records follow, the next sync resumes after it."""
    path = hand_written(tmp_path, 3, ended=False)
    path.write_text(path.read_text().rstrip("\n"))
    server, where = ServerLike(), tmp_path / "cursor.json"
    assert sync(path, server, cursor=where, resume=SyncResume.CONTINUE).synced == 3
    with path.open("a") as f:
        f.write("\n" + step_lines(3, 2) + end_line("r1"))
    result = sync(path, server, cursor=where, resume=SyncResume.CONTINUE)
    assert result.ended and result.synced == 5
    assert server.received == [0, 1, 2, 2, 3, 4]  # the last step again, then the rest


def test_follow_sends_a_growing_file_until_its_run_end(tmp_path):
    """follow=True picks up lines as another thread appends them, whole lines only (a
    line written in two parts is sent once complete), and returns at the run end."""
    path = hand_written(tmp_path, 5, ended=False)

    def append() -> None:
        for first in range(5, 100, 5):
            text = step_lines(first, 5)
            with path.open("a") as f:
                f.write(text[:7])
                f.flush()
                time.sleep(0.01)
                f.write(text[7:])
            time.sleep(0.01)
        with path.open("a") as f:
            f.write(end_line("r1", status="failed"))

    appender = threading.Thread(target=append)
    appender.start()
    server = ServerLike()
    try:
        result = sync(path, server, follow=True, interval=0.01, cursor=tmp_path / "c.json")
    finally:
        appender.join()
    assert result.ended and result.status == "failed" and result.synced == 100
    assert server.received == list(range(100))
    assert server.points == local_points(path) and server.status == "failed"


def test_follow_stops_when_the_writer_is_gone(tmp_path):
    """A followed run whose writer process is gone from this host and whose file stays
    quiet ends the sync: everything is sent, the run is closed as unfinished."""
    path = hand_written(tmp_path, 20, ended=False, pid=dead_pid())
    memory = steplog.MemoryBackend()
    started = time.monotonic()
    result = sync(path, memory, follow=True, interval=0.01, grace=0.2)
    assert time.monotonic() - started < 10
    assert result.writer_gone and not result.ended and result.status == "unfinished"
    assert len(memory.records) == 20 and memory.status == "unfinished"


def test_a_given_up_batch_stops_the_sync_and_the_next_one_resends_it(tmp_path):
    """A batch the backend refuses stops the sync with the cursor before it (nothing
    after it is sent, nothing is lost); the next sync begins with that batch."""

    class RefusesOnce(ServerLike):
        refused = False

        async def write(self, events) -> None:
            if events[0].step == 50 and not self.refused:
                self.refused = True
                raise steplog.PermanentBackendError("422: not now")
            await super().write(events)

    path = hand_written(tmp_path, 200, ended=True)
    server = RefusesOnce()
    where = tmp_path / "cursor.json"
    first = sync(path, server, batch_size=50, cursor=where, resume=SyncResume.CONTINUE)
    assert first.delivery.failed == 50 and first.synced == 50 and not first.ended
    assert server.received == list(range(50)) and server.status == "unfinished"
    second = sync(path, server, batch_size=50, cursor=where, resume=SyncResume.CONTINUE)
    assert second.ended and second.synced == 200 and second.delivery.failed == 0
    assert server.received == [*range(50), 49, *range(50, 200)]
    assert server.points == local_points(path)


def test_a_backend_that_cannot_continue_a_run_is_not_resumed(tmp_path):
    """A JSONL root refuses a run file it already has: a sync into it that stopped
    before the run's end cannot be resumed, and says what to delete."""
    path = hand_written(tmp_path, 10, ended=False)
    target = steplog.JsonlBackend(tmp_path / "copy")
    assert sync(path, target).synced == 10
    with pytest.raises(steplog.BackendOpenError, match="cannot resume the sync"):
        sync(path, steplog.JsonlBackend(tmp_path / "copy"))


def test_a_cursor_that_does_not_match_the_run_is_refused(tmp_path):
    """A cursor of another run, or pointing into the middle of a line, is an error
    naming the cursor to delete, not a silent resync."""
    path = hand_written(tmp_path, 10, ended=True)
    memory = steplog.MemoryBackend()
    where = cursor_path(path, memory)
    sync(path, memory)
    cursor = json.loads(where.read_text())
    where.write_text(json.dumps({**cursor, "run_id": "other"}))
    with pytest.raises(steplog.RunFileError, match="not of r1"):
        sync(path, memory)
    where.write_text(json.dumps({**cursor, "ended": False, "offset": cursor["offset"] - 3}))
    with pytest.raises(steplog.RunFileError, match="middle"):
        sync(path, memory)


def test_cursors_are_per_target(tmp_path):
    """Two MLflow servers, or two experiments on one, get two cursors."""
    path = tmp_path / "run.jsonl"
    a = cursor_path(path, steplog.MlflowBackend("http://a:5000"))
    b = cursor_path(path, steplog.MlflowBackend("http://b:5000"))
    c = cursor_path(path, steplog.MlflowBackend("http://a:5000", experiment_name="e"))
    assert len({a, b, c}) == 3
    assert a.name.startswith("run.jsonl.sync-mlflow-") and a.suffix == ".json"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --to"),
        (["--mlflow", "http://a:1", "--tensorboard", "tb"], "got --mlflow and --tensorboard"),
        (["--to", "ftp://host"], "--to ftp://host"),
        (["--to", "http://a:1", "--mlflow", "http://a:1"], "give one"),
        (["--mlflow", "http://a:1", "--interval", "0"], "--interval"),
    ],
)
def test_sync_usage_errors(args, message, tmp_path):
    """One backend per sync, --to takes MLflow URLs: anything else is a usage error."""
    path = hand_written(tmp_path, 3, ended=True)
    result = run_cli("sync", str(path), *args)
    assert result.returncode == 2, result.stderr
    assert "usage: steplog sync" in result.stderr and message in result.stderr
