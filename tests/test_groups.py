"""Groups, tags and ranks: a distributed job's processes as one group of runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import steplog
from steplog.runfile.header import read_header
from steplog.runfile.snapshot import open_run
from steplog.sync import sync

from conftest import run_steplog

# One rank of a job as torchrun starts it: RANK, LOCAL_RANK and WORLD_SIZE in the
# environment (torchrun also sets TORCHELASTIC_RUN_ID to its --rdzv-id).
RANK_SCRIPT = """
import json, sys, steplog
root, kwargs = sys.argv[1], json.loads(sys.argv[2])
tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="ddp", **kwargs)
info = tracker.init({"lr": 0.1})
for step in range(50):
    tracker.log({"loss": (1 + info.rank) / (step + 1) if info.rank is not None else 1.0})
tracker.finish()
"""


def _torchrun(
    root: Path, world: int, *, env: dict[str, str] | None = None, **kwargs: object
) -> None:
    """Start ``world`` ranks at once, as torchrun would, and wait for them."""
    procs = []
    for rank in range(world):
        rank_env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank % 2),
            "WORLD_SIZE": str(world),
            **(env or {}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT, str(root), json.dumps(kwargs)], env=rank_env
            )
        )
    assert [p.wait(timeout=60) for p in procs] == [0] * world


def _steplog(*args: str) -> str:
    done = run_steplog(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_each_rank_records_its_rank_and_the_group(tmp_path: Path) -> None:
    """Under torchrun every rank's run file carries its rank, local rank, the world size,
    the group and the tags; read_run gives them back."""
    _torchrun(tmp_path, 4, group="sweep-7", tags=["ddp", "baseline"])
    runs = sorted(
        (steplog.read_run(p) for p in (tmp_path / "ddp").glob("*.jsonl")),
        key=lambda r: r.rank if r.rank is not None else -1,
    )
    assert [r.rank for r in runs] == [0, 1, 2, 3]
    assert {r.group for r in runs} == {"sweep-7"}
    assert {r.world_size for r in runs} == {4}
    assert all(r.tags == ("ddp", "baseline") for r in runs)
    assert [r.history["loss"][0] for r in runs] == [1.0, 2.0, 3.0, 4.0]
    start = json.loads((runs[1].path).read_text().splitlines()[0])
    assert (start["rank"], start["local_rank"], start["world_size"]) == (1, 1, 4)


@pytest.mark.slow
def test_torchrun_job_id_is_the_default_group(tmp_path: Path) -> None:
    """Without group=, the ranks of one torchrun job share its --rdzv-id
    (TORCHELASTIC_RUN_ID); STEPLOG_GROUP sets the group as well."""
    _torchrun(tmp_path / "a", 2, env={"TORCHELASTIC_RUN_ID": "job-42"})
    _torchrun(tmp_path / "b", 2, env={"TORCHELASTIC_RUN_ID": "none", "STEPLOG_GROUP": "mine"})
    _torchrun(tmp_path / "c", 2, env={"TORCHELASTIC_RUN_ID": "none"})
    groups = {
        d: {steplog.read_run(p).group for p in (tmp_path / d / "ddp").glob("*.jsonl")}
        for d in "abc"
    }
    assert groups == {"a": {"job-42"}, "b": {"mine"}, "c": {None}}


@pytest.mark.slow
def test_rank0_only_writes_one_run(tmp_path: Path) -> None:
    """rank0_only=True: rank 0 writes its run; the other ranks' trackers work (init,
    log, finish) and write nothing."""
    _torchrun(tmp_path, 3, group="g", rank0_only=True)
    files = list((tmp_path / "ddp").glob("*.jsonl"))
    assert len(files) == 1
    run = steplog.read_run(files[0])
    assert (run.rank, run.world_size, len(run.records)) == (0, 3, 50)


def test_plain_runs_have_no_placement_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a distributed job and without group or tags, the run-start record is as
    before: no group, tags or rank fields."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "STEPLOG_GROUP"):
        monkeypatch.delenv(name, raising=False)
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path))
    info = tracker.init()
    tracker.finish()
    start = json.loads(Path(tracker.backends[0].path).read_text().splitlines()[0])  # type: ignore[attr-defined]
    assert not {"group", "tags", "rank", "local_rank", "world_size"} & set(start)
    assert (info.group, info.tags, info.rank) == (None, (), None)


def test_bad_group_and_tags_are_refused_at_construction() -> None:
    """A tag string instead of a list, a non-string tag or an empty group fail at once."""
    with pytest.raises(TypeError, match="not a single string"):
        steplog.Tracker(tags="baseline")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty strings"):
        steplog.Tracker(tags=["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="group must be"):
        steplog.Tracker(group="")
    with pytest.raises(TypeError, match="rank0_only"):
        steplog.Tracker(rank0_only="yes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_cli_lists_shows_and_compares_a_group(tmp_path: Path) -> None:
    """`steplog ls` lists a group's runs together by rank with GROUP and RANK columns
    and filters by group and tag; `show group:NAME` merges the ranks' metrics;
    `compare group:NAME` puts the ranks side by side."""
    _torchrun(tmp_path, 3, group="job-a", tags=["ddp"])
    plain = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="ddp")
    plain.init()
    plain.log({"loss": 9.0})
    plain.finish()
    listing = _steplog("ls", str(tmp_path)).splitlines()
    assert listing[0].split()[:3] == ["EXPERIMENT", "GROUP", "RANK"]
    ranks = [line.split()[2] for line in listing[1:] if "job-a" in line]
    assert ranks == ["0", "1", "2"]
    only = _steplog("ls", str(tmp_path), "--group", "job-a", "--json").splitlines()
    assert sorted(json.loads(line)["rank"] for line in only) == [0, 1, 2]
    assert len(_steplog("ls", str(tmp_path), "--tag", "ddp", "--json").splitlines()) == 3

    shown = json.loads(_steplog("show", "group:job-a", "--root", str(tmp_path), "--json"))
    assert [r["rank"] for r in shown["runs"]] == [0, 1, 2]
    loss = shown["metrics"]["loss"]
    assert loss["count"] == 150  # every rank's steps together
    assert (loss["max"], loss["min"]) == (3.0, pytest.approx(1 / 50))
    text = _steplog("show", "group:job-a", "--root", str(tmp_path))
    assert "group     job-a  ·  3 runs of a world of 3" in text

    compared = _steplog("compare", "group:job-a", "--root", str(tmp_path))
    rank_row = next(line for line in compared.splitlines() if line.startswith("rank"))
    assert rank_row.split()[1:] == ["0", "1", "2"]


def test_unknown_group_names_the_groups_there(tmp_path: Path) -> None:
    """A group that has no run fails with the groups there are."""
    _torchrun(tmp_path, 1, group="real")
    done = run_steplog("show", "group:nope", "--root", str(tmp_path))
    assert done.returncode == 1
    assert "no run of group 'nope'" in done.stderr and "groups: real" in done.stderr


@pytest.mark.slow
def test_plot_overlays_the_ranks_of_a_group(tmp_path: Path) -> None:
    """`steplog plot group:NAME` draws the group's runs into one image, which takes
    them in rank order."""
    pytest.importorskip("matplotlib", reason="steplog plot needs the [plot] extra")
    _torchrun(tmp_path, 2, group="g2")
    out = tmp_path / "g.png"
    _steplog("plot", "group:g2", "--root", str(tmp_path), "-o", str(out))
    assert out.stat().st_size > 1000
    from steplog.runfile.find import resolve_runs

    paths = resolve_runs("group:g2", tmp_path)
    assert [read_header(open_run(p)).rank for p in paths] == [0, 1]


def test_ls_with_filters_that_match_nothing_says_so(tmp_path: Path) -> None:
    """`steplog ls --tag X` with runs there but none tagged X says the filters matched
    nothing, not that the directory has no runs."""
    _torchrun(tmp_path, 1, group="g", tags=["a"])
    done = run_steplog("ls", str(tmp_path), "-t", "nope", "-g", "g")
    assert done.returncode == 0 and done.stdout == ""
    assert f"no runs under {str(tmp_path)!r} match -g g -t nope" in done.stderr


def _placed_run(root: Path, experiment: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run of rank 1 of 2 (RANK etc. set as torchrun sets them), group and tags."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tracker = steplog.Tracker(
        steplog.JsonlBackend(root), experiment_name=experiment, group="job-7", tags=["a", "b"]
    )
    tracker.init({"lr": 0.1})
    for step in range(5):
        tracker.log({"loss": 1.0 / (step + 1)})
    tracker.finish()
    path = tracker.backends[0].path
    assert path is not None
    return path


def test_replay_and_sync_open_the_run_with_its_group_tags_and_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run sent from its file (steplog.replay, steplog.sync) reaches the backend with
    the group, tags and ranks it had live: the same RunInfo whichever path sent it."""
    path = _placed_run(tmp_path, "ddp", monkeypatch)
    replayed, synced = steplog.MemoryBackend(), steplog.MemoryBackend()
    steplog.replay(path, replayed)
    sync(path, synced, cursor=tmp_path / "cursor.json")
    for backend in (replayed, synced):
        info = backend.info
        assert info is not None
        assert (info.group, info.tags) == ("job-7", ("a", "b"))
        assert (info.rank, info.local_rank, info.world_size) == (1, 1, 2)
        assert len(backend.records) == 5
