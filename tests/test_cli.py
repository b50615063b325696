"""The command line on real run files: ``cli.main(argv)`` in this process with its output
captured (``run_cli``), and a few smoke tests in a real process (``python -m steplog``:
the entry point, a pipe closed early, ``tail -f`` of a live writer, a killed writer)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import steplog
from steplog.runfile.follow import WRITER_GONE_GRACE

from conftest import run_steplog

pytestmark = pytest.mark.timeout(300)

# Drawing needs the plot extra; without it these tests skip (the message a user gets
# then is tested by test_plot_without_matplotlib_names_the_extra, which always runs).
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="drawing plots needs matplotlib (pip install 'steplog[plot]')",
)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """`steplog ARGS` in this process, as the shell would run it (see conftest)."""
    return run_steplog(*args, cwd=cwd, env=env)


def run_cli_process(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m steplog ARGS` in a real process: for what only a process shows."""
    return subprocess.run(
        [sys.executable, "-m", "steplog", *args], capture_output=True, text=True, timeout=timeout
    )


def write_run(root: Path, experiment: str, config: dict, steps: list[dict], summary=None) -> Path:
    backend = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(backend, experiment_name=experiment)
    tracker.init(config)
    for data in steps:
        tracker.log(data)
    tracker.finish(summary)
    assert backend.path is not None
    return backend.path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def runs_made_once(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three finished runs, one with NaN/inf, and one killed mid-write (torn last line)."""
    root = tmp_path_factory.mktemp("cli") / "runs"
    a = write_run(
        root,
        "sweep",
        {"lr": 0.1, "model": "gpt2", "opt": {"beta": 0.9, "eps": 1e-8}},
        [{"loss": 1.0 / (i + 1), "acc": i / 100, "trigger": f"t{i}"} for i in range(100)],
        {"best": 0.01},
    )
    time.sleep(0.01)
    nan_steps = []
    for i in range(50):
        loss: float = 2.0 - i * 0.01
        if i in (10, 20):
            loss = math.nan
        if i == 30:
            loss = math.inf
        nan_steps.append({"loss": loss, "acc": 0.5, "grad": {"norm": float(i)}})
    b = write_run(
        root, "sweep", {"lr": 0.2, "model": "gpt2", "opt": {"beta": 0.9, "eps": 1e-8}}, nan_steps
    )
    time.sleep(0.01)
    c = write_run(root, "other", {"lr": 0.3}, [{"loss": 5.0 - i} for i in range(5)])
    # A run whose writer was killed: no run-end record, half a line at the end.
    torn = write_run(root, "other", {"lr": 0.4}, [{"loss": 9.0 - i} for i in range(20)])
    lines = torn.read_bytes().split(b"\n")
    start = json.loads(lines[0])
    start["pid"] = dead_pid()
    body = [json.dumps(start).encode(), *lines[1:-2]]  # drop the run_end line
    torn.write_bytes(b"\n".join(body) + b'\n{"step":20,"time":1.0,"da')
    return {"root": root, "a": a, "nan": b, "c": c, "torn": torn}


@pytest.fixture
def runs(runs_made_once: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """The runs of ``runs_made_once``, copied (times kept) into this test's ``runs``: a
    test may change them."""
    made = runs_made_once["root"]
    root = shutil.copytree(made, tmp_path / "runs")
    return {name: root / path.relative_to(made) for name, path in runs_made_once.items()}


# ── demo ──────────────────────────────────────────────────────────────────────────────


@pytest.mark.slow
@needs_matplotlib
def test_demo_writes_a_readable_run_reports_cost_and_plots(tmp_path):
    """`steplog demo` logs to JSONL, prints path, steps/s, per-call cost, plot command
    (a real process: the smoke test of what a new user runs first)."""
    png = tmp_path / "demo.png"
    result = run_cli_process(
        "demo", "--steps", "20000", "--root", str(tmp_path), "--plot", str(png)
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"run written to (\S+\.jsonl)", result.stdout)
    assert match, result.stdout
    assert re.search(r"log\(\) cost per call: p50 [\d.]+ µs", result.stdout)
    assert re.search(r"\([\d,]+ steps/s\)", result.stdout)
    assert f"steplog plot {match.group(1)} -k loss" in result.stdout
    run = steplog.read_run(match.group(1))
    assert run.status == "finished"
    assert len(run.records) == 20_000
    assert run.config["steps"] == 20_000
    assert "best_loss" in run.summary
    assert min(run.history["loss"]) >= 0.0
    assert png_size(png) == (800, 720)  # 8 x (4.5 * 1.6) inches at 100 dpi, two panels


def test_demo_names_the_extra_plotting_needs(tmp_path, capsys, monkeypatch):
    """Without matplotlib, the demo's closing hint says to install steplog[plot] before
    `steplog plot`; with it, the hint is the command alone."""
    root = str(tmp_path / "runs")
    code, out, err = cli(capsys, "demo", "--steps", "2000", "--root", root)
    assert code == 0, err
    assert re.search(r"plot it: +steplog plot \S+ -k loss", out), out
    assert "pip install" not in out
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, out, err = cli(capsys, "demo", "--steps", "2000", "--root", root)
    assert code == 0, err
    assert re.search(r'plot it: +pip install "steplog\[plot\]" && steplog plot \S+ -k loss',
                     out), out  # fmt: skip


def test_no_command_prints_help_and_exits_2():
    result = run_cli()
    assert result.returncode == 2
    for name in ("demo", "ls", "show", "tail", "plot", "compare", "export"):
        assert name in result.stdout


@pytest.mark.parametrize("module", ["steplog", "steplog.cli"])
def test_python_dash_m_runs_the_command_line(module):
    """`python -m steplog` and `python -m steplog.cli` are the command line, exit code
    included (a real process: the entry points themselves)."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: steplog" in result.stdout
    assert subprocess.run([sys.executable, "-m", module], capture_output=True).returncode == 2


@pytest.mark.parametrize("command", ["demo", "ls", "show", "tail", "plot", "compare", "export"])
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert f"usage: steplog {command}" in result.stdout


def test_bad_steps_is_a_usage_error(tmp_path):
    result = run_cli("demo", "--steps", "0", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "--steps" in result.stderr


# ── ls ────────────────────────────────────────────────────────────────────────────────


def test_ls_lists_every_run_with_status_steps_and_last_metric(runs):
    result = run_cli("ls", str(runs["root"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "EXPERIMENT", "RUN", "STATUS", "STEPS", "DURATION", "STARTED", "LOSS"
    ]  # fmt: skip
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert len(rows) == 4
    a = rows[runs["a"].stem]
    assert a[0] == "sweep" and a[2] == "finished" and a[3] == "100"
    assert float(a[-1]) == pytest.approx(1.0 / 100)
    assert rows[runs["torn"].stem][2] == "incomplete"
    assert rows[runs["torn"].stem][3] == "20"
    assert rows[runs["nan"].stem][-1] == "1.51"  # last loss of the NaN run (2.0 - 49 * 0.01)


def test_ls_sorts_filters_limits_and_speaks_json(runs):
    root = str(runs["root"])
    by_metric = run_cli("ls", root, "--sort", "metric", "--json")
    assert by_metric.returncode == 0, by_metric.stderr
    rows = [json.loads(line) for line in by_metric.stdout.splitlines()]
    losses = [r["loss"] for r in rows]
    assert losses == sorted(losses)
    assert {r["status"] for r in rows} == {"finished", "incomplete"}

    reverse = run_cli("ls", root, "--sort", "steps", "--reverse", "--json", "-n", "2")
    steps = [json.loads(line)["steps"] for line in reverse.stdout.splitlines()]
    assert steps == [100, 50]

    only = run_cli("ls", root, "-e", "other", "-s", "finished", "--json")
    rows = [json.loads(line) for line in only.stdout.splitlines()]
    assert [r["run_id"] for r in rows] == [runs["c"].stem]


@pytest.mark.slow
def test_ls_reads_only_the_ends_of_hundreds_of_runs(tmp_path):
    """300 runs list correctly; each file is read at its first line and tail only."""
    root = tmp_path / "many"
    template = write_run(root, "big", {"i": 0}, [{"loss": float(i)} for i in range(20_000)])
    data = template.read_bytes()
    for i in range(300):
        (root / "big" / f"run-{i:03d}.jsonl").write_bytes(data)
    result = run_cli("ls", str(root), "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 301
    assert {r["steps"] for r in rows} == {20_000}
    assert {r["loss"] for r in rows} == {19_999.0}

    # The reader never touches the middle of a file: prove it by corrupting the middle.
    middle = len(data) // 2
    broken = data[:middle] + b"\x00garbage\x00" * 100 + data[middle + 900 :]
    (root / "big" / "run-000.jsonl").write_bytes(broken)
    again = run_cli("ls", str(root), "--json")
    assert len(again.stdout.splitlines()) == 301


def test_ls_on_a_missing_root_fails_with_exit_1(tmp_path):
    result = run_cli("ls", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "no run directory" in result.stderr


def test_ls_skips_files_that_are_not_runs(runs):
    (runs["root"] / "other" / "notes.jsonl").write_text('{"hello": 1}\n')
    result = run_cli("ls", str(runs["root"]))
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 5
    assert "skipped 1 file" in result.stderr


# ── show ──────────────────────────────────────────────────────────────────────────────


def test_show_prints_config_stats_summary_and_metric_table(runs):
    result = run_cli("show", str(runs["a"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "status    finished" in out
    assert "logged 100 · written 100 · dropped 0" in out
    assert re.search(r"config\s+lr\s+= 0\.1", out)
    assert re.search(r"opt\.beta\s+= 0\.9", out)
    assert re.search(r"summary\s+best = 0\.01", out)
    loss = next(line for line in out.splitlines() if line.startswith("loss "))
    # count, first, last, min (step), max (step), mean
    assert loss.split()[:8] == ["loss", "100", "1", "0.01", "0.01", "(99)", "1", "(0)"]
    trigger = next(line for line in out.splitlines() if line.startswith("trigger "))
    assert trigger.split() == ["trigger", "100", "t0", "t99"]


def test_show_counts_nan_and_inf_and_keeps_them_out_of_min_max_mean(runs):
    result = run_cli("show", str(runs["nan"]), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    loss = shown["metrics"]["loss"]
    finite = [2.0 - i * 0.01 for i in range(50) if i not in (10, 20, 30)]
    assert loss["count"] == 50
    assert loss["nan"] == 2 and loss["inf"] == 1
    assert loss["min"] == pytest.approx(min(finite)) and loss["min_step"] == 49
    assert loss["max"] == pytest.approx(2.0) and loss["max_step"] == 0
    assert loss["mean"] == pytest.approx(sum(finite) / len(finite))
    assert shown["metrics"]["grad.norm"]["max"] == 49.0
    text = run_cli("show", str(runs["nan"])).stdout
    row = next(line for line in text.splitlines() if line.startswith("loss "))
    assert row.split()[-2:] == ["2", "1"]  # NAN and INF columns


def test_show_copes_with_integers_beyond_float_range(tmp_path):
    path = write_run(tmp_path / "runs", "big", {}, [{"big": 2**2000}, {"big": -5}])
    result = run_cli("show", str(path))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("big "))
    # count, first (2**2000 = 1.14813e+602), last, min (step), max (step), mean, nan, inf
    assert row.split() == ["big", "2", "1.14813e+602", "-5", "-5", "(1)", "-5", "(1)", "-5", "1"]


def test_show_resolves_ids_prefixes_and_latest(runs):
    root = str(runs["root"])
    by_id = run_cli("show", runs["a"].stem, "--root", root, "--json")
    assert json.loads(by_id.stdout)["run_id"] == runs["a"].stem
    stem, others = runs["c"].stem, [runs[k].stem for k in ("a", "nan", "torn")]
    prefix = next(
        stem[:n] for n in range(1, len(stem)) if not any(o.startswith(stem[:n]) for o in others)
    )
    by_prefix = run_cli("show", f"other/{prefix}", "--root", root, "--json")
    assert json.loads(by_prefix.stdout)["run_id"] == stem
    shared = os.path.commonprefix([*others, stem])  # noqa: RUF071 - string prefixes wanted
    ambiguous = run_cli("show", shared, "--root", root)
    assert ambiguous.returncode == 1
    assert "matches 4 runs" in ambiguous.stderr
    latest = run_cli("show", str(runs["root"] / "other"), "--json")  # newest file in there
    assert json.loads(latest.stdout)["run_id"] == runs["torn"].stem
    assert json.loads(run_cli("show", "latest", "--root", root, "--json").stdout)["run_id"] == (
        runs["torn"].stem
    )


@pytest.mark.slow
def test_a_reader_that_stops_early_gets_no_error(tmp_path):
    """`steplog export RUN -o - | head -2`: exit 0, nothing on stderr, once the pipe closes."""
    path = write_run(tmp_path / "runs", "big", {}, [{"loss": float(i)} for i in range(50_000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "steplog", "export", str(path), "-o", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `head` exiting
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert err == b""


def test_show_of_a_torn_run_reports_incomplete(runs):
    result = run_cli("show", str(runs["torn"]))
    assert result.returncode == 0, result.stderr
    assert "status    incomplete" in result.stdout
    assert "last line is incomplete" in result.stdout
    assert re.search(r"^loss\s+20\s", result.stdout, re.M)


def test_show_errors_exit_1(runs, tmp_path):
    missing = run_cli("show", "no-such-run", "--root", str(runs["root"]))
    assert missing.returncode == 1
    assert "no run matches 'no-such-run'" in missing.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    result = run_cli("show", str(junk))
    assert result.returncode == 1
    assert "not a steplog run" in result.stderr


# ── tail ──────────────────────────────────────────────────────────────────────────────


def test_tail_prints_the_last_steps_and_selected_keys(runs):
    result = run_cli("tail", str(runs["a"]), "-n", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["97", "98", "99"]
    assert "trigger=t99" in lines[-1]
    keyed = run_cli("tail", str(runs["a"]), "-n", "2", "-k", "acc").stdout.splitlines()
    assert keyed[0].split() == ["STEP", "acc"]
    assert keyed[1].split() == ["98", "0.98"]
    torn = run_cli("tail", str(runs["torn"]), "-n", "1", "--json")
    assert json.loads(torn.stdout)["step"] == 19  # the torn line is not shown


WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    path, go = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = {"type": "run_start", "schema": 1, "run_id": "live", "experiment": "x",
             "start_time": time.time(), "pid": os.getpid(), "host": "h", "config": {}}
    os.write(fd, (json.dumps(start) + "\\n").encode())
    while not os.path.exists(go):
        time.sleep(0.01)
    for step in range(30):
        line = json.dumps({"step": step, "time": time.time(), "data": {"loss": step / 10}})
        line = (line + "\\n").encode()
        if step % 7 == 3:  # half a line, a pause, then the rest: tail must wait for it
            os.write(fd, line[:15])
            time.sleep(0.15)
            os.write(fd, line[15:])
        else:
            os.write(fd, line)
        time.sleep(0.01)
    end = {"type": "run_end", "run_id": "live", "end_time": time.time(), "status": "finished",
           "summary": {}, "stats": None}
    os.write(fd, (json.dumps(end) + "\\n").encode())
    """
)


@pytest.mark.slow
def test_tail_follow_prints_each_new_step_once_and_stops_at_run_end(tmp_path):
    """`steplog tail -f` in a real process follows a live writer: each step once, a half
    written line waited for, and it stops at the run end."""
    path = tmp_path / "live.jsonl"
    go = tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(go)])
    try:
        while not path.exists() or not path.read_bytes().endswith(b"\n"):
            time.sleep(0.01)
        follower = subprocess.Popen(
            [sys.executable, "-m", "steplog", "tail", "-f", str(path), "-k", "loss",
             "--interval", "0.02", "-n", "100"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        # Usually the follower is waiting on a file with no steps yet when the steps come;
        # on a loaded machine it may start after some of them: "-n 100" shows those first,
        # so each step is printed once either way.
        time.sleep(0.5)
        go.touch()
        out, err = follower.communicate(timeout=60)
    finally:
        writer.wait(timeout=60)
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["STEP", "loss"]
    assert lines[-1] == "-- run ended: finished"
    rows = [line.split() for line in lines[1:-1]]
    assert [int(r[0]) for r in rows] == list(range(30))
    assert [float(r[1]) for r in rows] == [step / 10 for step in range(30)]


def test_tail_follow_of_a_finished_run_returns_at_once(runs):
    result = run_cli("tail", "-f", str(runs["c"]), "-n", "1")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "-- run ended: finished"


# ── plot ──────────────────────────────────────────────────────────────────────────────


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after decoding it fully with matplotlib."""
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.std() > 0  # something was drawn
    return pixels.shape[1], pixels.shape[0]


@needs_matplotlib
def test_plot_overlays_runs_and_writes_a_png_of_the_requested_size(runs, tmp_path):
    out = tmp_path / "cmp.png"
    result = run_cli(
        "plot", str(runs["a"]), str(runs["nan"]), "-k", "loss", "-k", "acc",
        "-o", str(out), "--size", "6x4", "--dpi", "50", "--smooth", "5", "--log-y",
        "--title", "two runs",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert png_size(out) == (300, 320)  # 6 x (4 * 1.6) inches at 50 dpi
    assert "3 non-finite loss values not drawn" in result.stderr


@needs_matplotlib
def test_plot_downsamples_large_runs_and_keeps_spikes(tmp_path):
    """A run with more points than --max-points is drawn from bucket min/mean/max."""
    from steplog._plot import downsample, load_series
    from steplog.runfile.snapshot import open_run

    steps = [{"loss": 1.0} for _ in range(20_000)]
    steps[12_345] = {"loss": 50.0}
    path = write_run(tmp_path / "runs", "spiky", {}, steps)
    series = load_series(open_run(path), ["loss"])["loss"]
    assert len(series.y) == 20_000
    x, mean, low, high = downsample(series.x, series.y, 100)
    assert len(x) == len(mean) == len(low) == len(high) == 100
    assert high.max() == 50.0 and low.min() == 1.0
    assert mean.max() < 2.0  # the spike is in the envelope, not the mean line
    out = tmp_path / "spiky.png"
    result = run_cli("plot", str(path), "-o", str(out), "--max-points", "100", "--x", "time")
    assert result.returncode == 0, result.stderr
    assert png_size(out) == (800, 450)


@needs_matplotlib
def test_plot_failures_exit_1_with_a_reason(runs, tmp_path):
    """A key with nothing to draw (text only) is exit 1 saying why; a key the run does
    not have is a usage error (exit 2) naming the keys with numbers."""
    result = run_cli("plot", str(runs["a"]), "-k", "trigger", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 1
    assert "'trigger' holds text" in result.stderr
    assert not (tmp_path / "x.png").exists()
    unknown = run_cli("plot", str(runs["a"]), "-k", "nope", "-o", str(tmp_path / "x.png"))
    assert unknown.returncode == 2
    assert "'nope'" in unknown.stderr and "acc, loss" in unknown.stderr
    assert not (tmp_path / "x.png").exists()
    usage = run_cli("plot", str(runs["a"]), "--size", "big")
    assert usage.returncode == 2


def test_plot_without_matplotlib_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = run_cli("plot", str(runs["a"]), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 1
    assert "pip install 'steplog[plot]'" in result.stderr


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures `steplog plot` saves, kept (after drawing them) for a test to look at."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def vertical_lines(ax) -> list[float]:
    """The x of each full-height vertical line drawn in a panel (axvline)."""
    return [
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]


def with_system_samples(path: Path, samples: list[tuple[int, dict]]) -> None:
    """Put system-metrics records into a finished run file, each after step record N."""
    lines = path.read_text().splitlines()
    out = [lines[0]]
    by_step = dict(samples)
    for line in lines[1:]:
        out.append(line)
        record = json.loads(line)
        if "step" in record and record["step"] in by_step:
            system = {"type": "system", "time": record["time"] + 1e-6, "events": 0,
                      "data": by_step[record["step"]]}  # fmt: skip
            out.append(json.dumps(system))
    path.write_text("\n".join(out) + "\n")


@needs_matplotlib
def test_plot_against_any_numeric_key(tmp_path, capsys):
    """--x KEY draws against the values of KEY in the same records (trial, epoch,
    tokens): a record without a number under KEY is left out with a note; system
    samples are at KEY's last value before them. An --x key no run has is a usage error
    naming the keys there are, as is a system metric; one holding text is exit 1."""
    from steplog._plot import load_series
    from steplog.runfile.snapshot import open_run

    steps = [{"loss": 1.0 / (i + 1), "tokens": 512 * (i + 1), "name": "t"} for i in range(30)]
    steps[7] = {"loss": 0.5}  # no tokens here
    path = write_run(tmp_path / "runs", "lm", {}, steps)
    with_system_samples(path, [(3, {"rss_mb": 100.0}), (20, {"rss_mb": 120.0})])
    series = load_series(open_run(path), ["loss", "system.rss_mb"], "tokens")
    assert list(series["loss"].x) == [512.0 * (i + 1) for i in range(30) if i != 7]
    assert list(series["system.rss_mb"].x) == [512.0 * 4, 512.0 * 21]
    out = tmp_path / "tokens.png"
    code, stdout, err = cli(capsys, "plot", str(path), "-k", "loss", "--x", "tokens",
                            "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}" in stdout
    assert "1 loss value without a number under 'tokens' not drawn" in err
    assert png_size(out) == (800, 450)
    code, _, err = cli(capsys, "plot", str(path), "--x", "epoch", "-o", str(tmp_path / "x.png"))
    assert code == 2
    assert "--x 'epoch'" in err and "loss, tokens" in err
    code, _, err = cli(capsys, "plot", str(path), "--x", "name", "-o", str(tmp_path / "x.png"))
    assert code == 1
    assert "'name' holds text" in err
    code, _, err = cli(capsys, "plot", str(path), "--x", "system.rss_mb")
    assert code == 2 and "--x takes step, time or a key of the step records" in err
    assert not (tmp_path / "x.png").exists()


@needs_matplotlib
def test_smooth_and_log_y_apply_only_to_the_panels_they_suit(tmp_path, capsys, drawn):
    """--smooth N smooths a curve of at least 2N points only: a 9-sample system-metrics
    panel is drawn as it is, not labelled a moving mean, with a note saying why.
    --log-y makes a panel logarithmic only where all its values are above 0."""
    steps = [{"loss": 1.0 / (i + 1), "acc": i / 200} for i in range(200)]
    path = write_run(tmp_path / "runs", "mixed", {}, steps)
    with_system_samples(path, [(20 * i, {"rss_mb": 100.0 + i}) for i in range(9)])
    out = tmp_path / "panels.png"
    code, _, err = cli(capsys, "plot", str(path), "-k", "loss", "-k", "acc", "-k",
                       "system.rss_mb", "--smooth", "20", "--log-y", "-o", str(out))  # fmt: skip
    assert code == 0, err
    (figure,) = drawn
    loss, acc, rss = figure.axes
    assert loss.get_ylabel() == "loss (moving mean of 20)"
    assert rss.get_ylabel() == "system.rss_mb"
    assert len(rss.get_lines()) == 1  # no faint raw curve under a smoothed one
    assert "system.rss_mb has 9 points, too few for --smooth 20: drawn as is" in err
    assert (loss.get_yscale(), acc.get_yscale(), rss.get_yscale()) == ("log", "linear", "log")
    assert "--log-y not applied to 'acc': it has values of 0 or less" in err
    assert png_size(out) == (800, 990)  # 8 x (4.5 * 2.2) inches at 100 dpi, three panels


@needs_matplotlib
@pytest.mark.parametrize("x_axis", ["step", "time", "tokens"])
def test_plot_marks_where_a_resumed_runs_segments_begin(tmp_path, capsys, drawn, x_axis):
    """Each resume of a run is a faint vertical line, labelled, where its segment begins
    (its first step, its resume time, or KEY's first value after it); a run never
    resumed has none."""
    root = tmp_path / "runs"
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="job")
    info = tracker.init()
    for i in range(50):
        tracker.log({"loss": 1.0 / (i + 1), "tokens": 100 * i})
    tracker.finish(status="failed")
    time.sleep(0.05)
    again = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="job")
    again.init(resume=info.run_id)
    for i in range(50, 80):
        again.log({"loss": 1.0 / (i + 1), "tokens": 100 * i})
    again.finish()
    path = root / "job" / f"{info.run_id}.jsonl"
    run = steplog.read_run(path)
    expected = {
        "step": 50.0,
        "time": run.segments[1].start_time - run.start_time,
        "tokens": 5000.0,
    }[x_axis]
    plain = write_run(root, "plain", {}, [{"loss": 1.0, "tokens": i} for i in range(80)])
    out = tmp_path / "resumed.png"
    code, _, err = cli(capsys, "plot", str(path), str(plain), "-k", "loss", "-k", "tokens",
                       "--x", x_axis, "-o", str(out))  # fmt: skip
    assert code == 0, err
    (figure,) = drawn
    for ax in figure.axes:
        assert vertical_lines(ax) == [pytest.approx(expected)]
    assert [t.get_text() for t in figure.axes[0].texts] == ["resumed"]
    assert png_size(out) == (800, 720)


# ── compare ───────────────────────────────────────────────────────────────────────────


def test_compare_shows_differing_config_and_last_and_best_metrics(runs):
    result = run_cli("compare", str(runs["a"]), str(runs["nan"]), "--max", "acc")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line}
    assert rows["config.lr"] == ["0.1", "0.2"]
    assert "config.model" not in rows  # equal in both runs
    assert "config.opt.beta" not in rows
    assert rows["status"] == ["finished", "finished"]
    assert rows["steps"] == ["100", "50"]
    text = result.stdout
    assert re.search(r"loss \(last\)\s+0\.01\s+1\.51\s*$", text, re.M)
    assert re.search(r"loss \(min\)\s+0\.01 \*\s+1\.51\s*$", text, re.M)
    assert re.search(r"acc \(max\)\s+0\.99 \*\s+0\.5\s*$", text, re.M)
    everything = run_cli("compare", str(runs["a"]), str(runs["nan"]), "--all-config")
    assert "config.model" in everything.stdout


def test_compare_of_one_run_named_twice_says_so(runs, capsys):
    """`steplog compare latest PATH`, the same run named two ways: the header keeps the
    run ids (not the paths) and a line under the table says the columns are one run."""
    root = str(runs["root"])
    code, out, err = cli(capsys, "compare", "latest", str(runs["torn"]), "--root", root)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [runs["torn"].stem, runs["torn"].stem]
    assert f"columns 1 and 2 are the same run ({runs['torn']})" in out
    code, out, err = cli(capsys, "compare", str(runs["a"]), str(runs["nan"]))
    assert "same run" not in out


# ── export ────────────────────────────────────────────────────────────────────────────


def test_export_csv_has_one_row_per_step_and_one_column_per_key(runs, tmp_path):
    out = tmp_path / "nan.csv"
    result = run_cli("export", str(runs["nan"]), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "50 rows" in result.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "time", "loss", "acc", "grad.norm"]
    assert [int(r["step"]) for r in rows] == list(range(50))
    assert rows[10]["loss"] == "nan" and rows[30]["loss"] == "inf"
    assert float(rows[5]["loss"]) == 2.0 - 5 * 0.01
    assert float(rows[49]["grad.norm"]) == 49.0
    mixed = run_cli("export", str(runs["a"]), "-o", "-")
    rows = list(csv.DictReader(mixed.stdout.splitlines()))
    assert rows[99]["trigger"] == "t99" and len(rows) == 100


def test_export_torn_run_skips_the_torn_line(runs, tmp_path):
    result = run_cli("export", str(runs["torn"]), "-o", str(tmp_path / "t.csv"))
    assert result.returncode == 0, result.stderr
    assert "20 rows" in result.stdout


def test_export_parquet_keeps_types(runs, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="parquet export needs pyarrow")
    out = tmp_path / "a.parquet"
    result = run_cli("export", str(runs["a"]), "--format", "parquet", "-o", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 100
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "step": "int64", "time": "double", "loss": "double", "acc": "double",
        "trigger": "string",
    }  # fmt: skip
    assert table.column("trigger").to_pylist()[-1] == "t99"
    nan = tmp_path / "nan.parquet"
    run_cli("export", str(runs["nan"]), "--format", "parquet", "-o", str(nan))
    losses = pq.read_table(nan).column("loss").to_pylist()
    assert math.isnan(losses[10]) and losses[30] == math.inf


def test_export_parquet_to_stdout_is_a_usage_error(runs):
    result = run_cli("export", str(runs["a"]), "--format", "parquet", "-o", "-")
    assert result.returncode == 2


# ── progress bars ────────────────────────────────────────────────────────────────────

SLOW_FINISH = textwrap.dedent(
    """
    import anyio, steplog

    class Slow(steplog.Backend):
        async def open(self, run): pass
        async def write(self, events): await anyio.sleep(len(events) * 0.0005)  # 2 s in all
        async def close(self, end): pass

    tracker = steplog.Tracker(Slow(), batch_size=100, flush_interval=0.01)
    tracker.init()
    for i in range(4000):
        tracker.log({"x": i})
    stats = tracker.finish()
    print("delivered", stats.backends["slow"].delivered)
    """
)


ASYNC_SLOW_FINISH = textwrap.dedent(
    """
    import asyncio, anyio, steplog

    class Slow(steplog.Backend):
        async def open(self, run): pass
        async def write(self, events): await anyio.sleep(len(events) * 0.0005)  # 2 s in all
        async def close(self, end): pass

    async def main():
        tracker = steplog.AsyncTracker(Slow(), batch_size=100, flush_interval=0.01)
        await tracker.init()
        for i in range(4000):
            tracker.log({"x": i})
        ticks = 0
        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1
        ticker = asyncio.create_task(tick())
        stats = await tracker.finish()
        ticker.cancel()
        print("delivered", stats.backends["slow"].delivered, "loop alive", ticks > 10)

    asyncio.run(main())
    """
)


def run_with_terminal_stderr(code: str) -> tuple[int, str, str]:
    """Run ``code`` with stderr on a pseudo-terminal (stdout a pipe)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_finish_shows_progress_for_a_slow_backlog_on_a_terminal_only():
    code, out, terminal = run_with_terminal_stderr(SLOW_FINISH)
    assert code == 0, terminal
    assert out.strip() == "delivered 4000"
    assert re.search(r"steplog: writing [\d,]+ events to slow", terminal), terminal
    quiet = subprocess.run(
        [sys.executable, "-c", SLOW_FINISH], capture_output=True, text=True, timeout=60
    )
    assert quiet.returncode == 0
    assert quiet.stdout.strip() == "delivered 4000"
    assert quiet.stderr == ""  # not a terminal: no bar, no noise


@pytest.mark.slow
def test_async_finish_shows_progress_without_blocking_the_event_loop():
    code, out, terminal = run_with_terminal_stderr(ASYNC_SLOW_FINISH)
    assert code == 0, terminal
    assert out.strip() == "delivered 4000 loop alive True"
    assert re.search(r"steplog: writing [\d,]+ events to slow", terminal), terminal


# ── corrupt lines: skipped with a warning; a torn last line is silent ────────────────


def corrupt_middle(path: Path) -> int:
    """Replace a step line in the middle of ``path`` with garbage; its line number."""
    lines = path.read_bytes().split(b"\n")
    number = len(lines) // 2
    assert json.loads(lines[number - 1])["step"] >= 0  # a step record
    lines[number - 1] = b'{"step": 4, "time": 1.0, "da\x00garbage'
    path.write_bytes(b"\n".join(lines))
    return number


READERS = {
    "show": ["show", "{path}"],
    "show --json": ["show", "{path}", "--json"],
    "tail": ["tail", "{path}", "-n", "1000"],
    "export": ["export", "{path}", "-o", "{tmp}/out.csv"],
    "compare": ["compare", "{path}", "{path}"],
    "plot": ["plot", "{path}", "-o", "{tmp}/out.png"],
    "replay": ["replay", "{path}", "--jsonl", "{tmp}/copy"],
}


@pytest.mark.parametrize("command", list(READERS))
def test_a_corrupt_line_mid_file_is_skipped_with_a_warning_naming_it(command, runs, tmp_path):
    """Commands that read step records skip a corrupt mid-file line, exit 0, and say so
    on stderr with the count and line number (read_run raises on the same file)."""
    path = runs["a"]
    number = corrupt_middle(path)
    with pytest.raises(steplog.RunFileError, match=f":{number}: corrupt"):
        steplog.read_run(path)
    args = [a.format(path=path, tmp=tmp_path) for a in READERS[command]]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"skipped 1 corrupt line (line {number}) in {path}" in result.stderr
    assert "Traceback" not in result.stderr
    if command == "show --json":
        assert json.loads(result.stdout)["records"] == 99
    if command == "export":
        assert "99 rows" in result.stdout
    if command == "replay":
        assert "jsonl 99 delivered" in result.stdout


def test_two_corrupt_lines_are_counted_and_listed(runs, tmp_path):
    """The warning gives the count and every line number (plural form)."""
    path = runs["a"]
    lines = path.read_bytes().split(b"\n")
    lines[10] = b"not json"
    lines[20] = b'{"step": "x", "time": 1.0, "data": {}}'  # valid JSON, not a step record
    path.write_bytes(b"\n".join(lines))
    result = run_cli("show", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert f"skipped 2 corrupt lines (lines 11, 21) in {path}" in result.stderr
    assert json.loads(result.stdout)["records"] == 98


@pytest.mark.parametrize("command", [c for c in READERS if c != "replay"])
def test_a_torn_last_line_is_silent(command, runs, tmp_path):
    """A killed writer's half-written last line is normal: nothing on stderr."""
    args = [a.format(path=runs["torn"], tmp=tmp_path) for a in READERS[command]]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# ── tail -f: a dead writer, and --json output that stays JSON ────────────────────────

DYING_WRITER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = {"type": "run_start", "schema": 1, "run_id": "doomed", "experiment": "x",
             "start_time": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
             "config": {}}
    os.write(fd, (json.dumps(start) + "\\n").encode())
    for step in range(5):
        line = json.dumps({"step": step, "time": time.time(), "data": {"loss": step / 10}})
        os.write(fd, (line + "\\n").encode())
    os.write(fd, b'{"step": 5, "ti')  # killed mid-line, as a real writer would be
    print("ready", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_tail_follow_stops_when_the_writer_is_killed(tmp_path, json_mode):
    """tail -f of a run whose writer dies without a run end stops (exit 1) and says the
    writer is gone, instead of waiting forever; with --json, stdout stays pure JSON."""
    path = tmp_path / "doomed.jsonl"
    writer = subprocess.Popen(
        [sys.executable, "-c", DYING_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    follower = None
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        extra = ["--json"] if json_mode else []
        follower = subprocess.Popen(
            [sys.executable, "-m", "steplog", "tail", "-f", str(path), "--interval", "0.05",
             *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)
        assert follower.poll() is None  # the writer is alive: keep following
        writer.kill()
        writer.wait(timeout=30)
        killed_at = time.monotonic()
        out, err = follower.communicate(timeout=60)
        waited = time.monotonic() - killed_at
    finally:
        writer.kill()
        writer.wait(timeout=30)
        assert writer.stdout is not None
        writer.stdout.close()
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait(timeout=30)
    assert follower.returncode == 1, (out, err)
    assert "is gone" in err and "incomplete" in err
    assert waited < 15
    lines = out.splitlines()
    assert len(lines) == 5
    if json_mode:
        assert [json.loads(line)["step"] for line in lines] == list(range(5))
    else:
        assert [int(line.split()[0]) for line in lines] == list(range(5))


RESUMING_WRITER = textwrap.dedent(
    """
    import sys, time, steplog
    root, run_id = sys.argv[1], sys.argv[2]
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="x")
    tracker.init(resume=run_id)
    tracker.log({"loss": 0.5})
    tracker.flush()
    print("ready", flush=True)
    time.sleep(float(sys.argv[3]))  # quiet for longer than tail's grace: but alive
    tracker.log({"loss": 0.25})
    tracker.finish()
    """
)


@pytest.mark.slow
def test_tail_follow_of_a_resumed_run_follows_its_current_writer(tmp_path):
    """tail -f of a resumed run watches the process that resumed it, not the one that
    started it (long gone): a quiet but live resumed writer is followed to its end."""
    first = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="x")
    info = first.init()
    first.log({"loss": 1.0})
    first.finish(status="failed")
    # The run file names this process as its first writer: make that one gone.
    path = tmp_path / "x" / f"{info.run_id}.jsonl"
    text = path.read_text().splitlines()
    start = json.loads(text[0])
    start["pid"] = _dead_pid()
    path.write_text("\n".join([json.dumps(start), *text[1:]]) + "\n")
    quiet = WRITER_GONE_GRACE + 1.5
    writer = subprocess.Popen(
        [sys.executable, "-c", RESUMING_WRITER, str(tmp_path), info.run_id, str(quiet)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        follower = run_cli("tail", "-f", str(path), "-k", "loss", "--interval", "0.05")
    finally:
        writer.wait(timeout=60)
        assert writer.stdout is not None
        writer.stdout.close()
    assert follower.returncode == 0, follower.stderr
    lines = follower.stdout.splitlines()
    assert lines[-1] == "-- run ended: finished"
    assert [line.split()[:2] for line in lines[1:-1]][-1] == ["2", "0.25"]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


@pytest.mark.slow
def test_tail_follow_of_a_dead_writers_run_stops_at_once(runs):
    """A run ls calls incomplete (writer not alive on this host) ends tail -f at once."""
    started = time.monotonic()
    result = run_cli("tail", "-f", str(runs["torn"]), "-n", "2")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "is gone" in result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["18", "19"]


def test_tail_follow_json_keeps_stdout_pure_json(runs):
    """tail -f --json: every stdout line is a JSON step record (for | jq); the
    run-ended notice goes to stderr."""
    result = run_cli("tail", "-f", "--json", str(runs["c"]), "-n", "3")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4]
    assert "run ended: finished" in result.stderr


def test_tail_json_prints_records_in_the_files_own_encoding(tmp_path):
    """tail --json of NaN and an integer beyond 64 bits: the tagged form the file holds
    (docs/schema.md), not a crash or a null."""
    path = write_run(tmp_path / "runs", "big", {}, [{"big": 2**100, "loss": math.nan}])
    result = run_cli("tail", "--json", str(path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert data == {"big": {"$int": str(2**100)}, "loss": {"$float": "NaN"}}
    keyed = run_cli("tail", "--json", str(path), "-k", "loss")
    assert json.loads(keyed.stdout)["data"] == {"loss": {"$float": "NaN"}}


# ── replay: a backend that cannot open is one line on stderr, exit 1 ─────────────────


def replay_target(kind: str, tmp_path: Path) -> list[str]:
    if kind == "mlflow":
        return ["--mlflow", "http://127.0.0.1:9"]  # discard port: nothing listens
    if kind == "tensorboard":
        pytest.importorskip("tensorboard", reason="the TensorBoard backend needs tensorboard")
        return ["--tensorboard", "/dev/null/tb"]
    afile = tmp_path / "a-file"
    afile.write_text("not a directory\n")
    return ["--jsonl", str(afile)]


@pytest.mark.parametrize("kind", ["mlflow", "tensorboard", "jsonl"])
def test_replay_into_a_backend_that_cannot_open_is_one_line_exit_1(kind, runs, tmp_path):
    """An unreachable MLflow, a TensorBoard dir under /dev/null, a JSONL root that is a
    file: exit 1 with one line naming the backend, no traceback."""
    result = run_cli("replay", str(runs["c"]), *replay_target(kind, tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"steplog replay: could not open backend {kind!r}")


# ── live files: every figure describes one snapshot ──────────────────────────────────

APPENDER = textwrap.dedent(
    """
    import os, sys, time
    path, first = sys.argv[1], int(sys.argv[2])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    step = first
    deadline = time.monotonic() + 60
    print("go", flush=True)
    while time.monotonic() < deadline:
        batch = "".join(
            f'{{"step":{s},"time":{s * 0.001},"data":{{"i":{s},"loss":0.5}}}}\\n'
            for s in range(step, step + 500)
        ).encode()
        step += 500
        cut = len(batch) - 17  # leave the last line half written for a moment
        os.write(fd, batch[:cut])
        time.sleep(0.001)
        os.write(fd, batch[cut:])
        time.sleep(0.004)  # about 100 000 steps a second
    """
)


@pytest.fixture
def live_run(tmp_path):
    """A run file with 300 000 steps that another process keeps appending to."""
    path = tmp_path / "live.jsonl"
    start = {"type": "run_start", "schema": 1, "run_id": "live", "experiment": "x",
             "start_time": 0.0, "pid": os.getpid(), "host": "elsewhere", "config": {}}  # fmt: skip
    first = 300_000
    body = "".join(
        f'{{"step":{s},"time":{s * 0.001},"data":{{"i":{s},"loss":0.5}}}}\n' for s in range(first)
    )
    path.write_text(json.dumps(start) + "\n" + body)
    writer = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(path), str(first)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline() == "go\n"
    size = path.stat().st_size
    deadline = time.monotonic() + 30
    while path.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.01)  # the file is growing before a command reads it
    yield path
    writer.kill()
    writer.wait(timeout=30)
    writer.stdout.close()


@pytest.mark.slow
def test_show_of_a_growing_file_describes_one_snapshot(live_run):
    """show while another process appends: record count, last step and per-key
    statistics all describe the same records."""
    for _ in range(2):
        result = run_cli("show", str(live_run), "--json")
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        records = shown["records"]
        assert records > 300_000
        assert shown["steps"] == records  # steps 0 .. records - 1
        assert shown["metrics"]["i"]["count"] == records
        assert shown["metrics"]["i"]["last"] == records - 1
        assert shown["metrics"]["i"]["max"] == records - 1
        text = run_cli("show", str(live_run)).stdout
        match = re.search(r"([\d,]+) step records\s+·\s+last step (\d+)", text)
        assert match, text
        assert int(match.group(1).replace(",", "")) == int(match.group(2)) + 1


@pytest.mark.slow
def test_export_of_a_growing_file_writes_the_rows_it_announces(live_run, tmp_path):
    """export while another process appends: the row count printed is the number of
    rows written, and they are the steps 0 .. count - 1."""
    out = tmp_path / "live.csv"
    result = run_cli("export", str(live_run), "-o", str(out))
    assert result.returncode == 0, result.stderr
    match = re.search(r"\(([\d,]+) rows, 4 columns\)", result.stdout)
    assert match, result.stdout
    announced = int(match.group(1).replace(",", ""))
    with open(out, newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert len(steps) == announced
    assert steps == list(range(announced))


# ── usage: --root for ls, the subcommand's usage, unknown keys, bad numbers ──────────


def test_ls_takes_root_as_an_option_like_the_other_commands(runs, monkeypatch):
    """`steplog ls --root DIR` lists DIR, as `ls DIR` does; naming two roots is a usage
    error."""
    by_option = run_cli("ls", "--root", str(runs["root"]), "--json")
    assert by_option.returncode == 0, by_option.stderr
    assert len(by_option.stdout.splitlines()) == 4
    assert by_option.stdout == run_cli("ls", str(runs["root"]), "--json").stdout
    both = run_cli("ls", str(runs["root"]), "--root", str(runs["root"] / "other"))
    assert both.returncode == 2
    assert "usage: steplog ls" in both.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "{a}", "-n", "-1"], "-n must be 0 or more"),
        (["tail", "{a}", "--interval", "0"], "--interval"),
        (["ls", "{root}", "-n", "-1"], "-n must be 0 or more"),
        (["plot", "{a}", "--smooth", "-5"], "--smooth"),
        (["plot", "{a}", "--size", "0x0"], "--size"),
        (["plot", "{a}", "--size", "8xnan"], "--size"),
        (["plot", "{a}", "--dpi", "0"], "--dpi"),
        (["demo", "--steps", "0"], "--steps"),
    ],
)
def test_bad_values_are_usage_errors_with_the_subcommands_usage(args, message, runs, tmp_path):
    """A bad number is exit 2 with a message naming the option, after the usage line of
    the subcommand (not of `steplog` itself)."""
    argv = [a.format(a=runs["a"], root=runs["root"]) for a in args]
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"usage: steplog {argv[0]} ")
    assert message in result.stderr
    assert not list(tmp_path.glob("*.png"))


def test_unknown_keys_are_usage_errors_naming_the_keys_that_exist(runs):
    """tail -k, compare -k/--max and plot -k with a key the run does not have: exit 2,
    naming the key and the keys there are."""
    tail = run_cli("tail", str(runs["a"]), "-k", "typo")
    assert tail.returncode == 2
    assert "'typo'" in tail.stderr and "acc, loss, trigger" in tail.stderr
    compare = run_cli("compare", str(runs["a"]), str(runs["nan"]), "--max", "typo")
    assert compare.returncode == 2
    assert "'typo'" in compare.stderr and "acc, grad.norm, loss" in compare.stderr
    compare_k = run_cli("compare", str(runs["a"]), str(runs["nan"]), "-k", "los")
    assert compare_k.returncode == 2 and "'los'" in compare_k.stderr
    plot = run_cli("plot", str(runs["a"]), "-k", "loss", "-k", "typo", "-o", "x.png")
    assert plot.returncode == 2
    assert "'typo'" in plot.stderr and "acc, loss" in plot.stderr
    nested = run_cli("tail", str(runs["nan"]), "-n", "1", "-k", "grad.norm")
    assert nested.returncode == 0, nested.stderr
    assert nested.stdout.splitlines()[1].split() == ["49", "49"]


def test_counts_of_one_are_singular(tmp_path):
    """'1 step record', '1 row' — not '1 step records'."""
    path = write_run(tmp_path / "runs", "one", {}, [{"loss": 1.0}])
    show = run_cli("show", str(path))
    assert re.search(r"\b1 step record\s+·", show.stdout), show.stdout
    export = run_cli("export", str(path), "-o", str(tmp_path / "one.csv"))
    assert "(1 row, 3 columns)" in export.stdout


@needs_matplotlib
def test_plot_of_a_key_holding_lists_says_so_and_fails(tmp_path):
    """A key whose values are vectors cannot be drawn: exit 1 saying it holds lists,
    no image, instead of an empty panel and exit 0."""
    path = write_run(
        tmp_path / "runs",
        "vec",
        {},
        [{"loss": 1.0 / (i + 1), "emb": [i, i + 1]} for i in range(20)],
    )
    out = tmp_path / "vec.png"
    result = run_cli("plot", str(path), "-k", "loss", "-k", "emb", "-o", str(out))
    assert result.returncode == 1
    assert "'emb' holds lists" in result.stderr
    assert not out.exists()


# ── run ids ───────────────────────────────────────────────────────────────────────────


def test_run_ids_created_in_the_same_second_sort_by_start_time():
    """Ids made in quick succession (same second) sort in creation order and stay
    valid single path components."""
    from steplog._names import check_name, new_run_id

    ids = [new_run_id() for _ in range(200)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200
    for run_id in ids[:3]:
        assert check_name(run_id, what="run id") == run_id


def test_ls_sorts_old_and_new_run_ids_alike_by_run_and_by_start(tmp_path):
    """Runs started the same second list in start order by --sort run as by --sort
    start, also next to files with ids in the older format (no sub-second part)."""
    root = tmp_path / "runs"
    paths = [write_run(root, "fast", {}, [{"loss": float(i)}]) for i in range(6)]
    # An older-format id from an earlier second: still listed, resolved and sorted.
    old = paths[0].read_bytes().split(b"\n")
    start = json.loads(old[0])
    start["run_id"] = "20200101-000000-99999-abcdef"
    start["start_time"] -= 3600
    (root / "fast" / "20200101-000000-99999-abcdef.jsonl").write_bytes(
        b"\n".join([json.dumps(start).encode(), *old[1:]])
    )
    by_run = run_cli("ls", str(root), "--sort", "run", "--json")
    by_start = run_cli("ls", str(root), "--sort", "start", "--json")
    ids = [json.loads(line)["run_id"] for line in by_run.stdout.splitlines()]
    assert ids == [json.loads(line)["run_id"] for line in by_start.stdout.splitlines()]
    assert ids == ["20200101-000000-99999-abcdef", *(p.stem for p in paths)]
    shown = run_cli("show", "20200101-000000", "--root", str(root), "--json")
    assert json.loads(shown.stdout)["run_id"] == "20200101-000000-99999-abcdef"


def test_json_output_of_show_and_ls_keeps_big_integers_and_nan(tmp_path):
    """--json of show and ls prints values as the run file stores them (2**70 and NaN
    tagged), never a traceback (they crashed on integers beyond 64 bits)."""
    root = tmp_path / "runs"
    write_run(root, "big", {"seed": 2**70}, [{"loss": math.nan, "n": 2**70} for _ in range(3)])
    show = run_cli("show", "latest", "--root", str(root), "--json")
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["config"]["seed"] == {"$int": str(2**70)}
    listed = run_cli("ls", "--root", str(root), "--json", "-m", "n")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["n"] == {"$int": str(2**70)}


# ── naming runs: the experiment names `steplog ls` prints ───────────────────────────


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`steplog ARGS` in this process: the exit code, stdout and stderr."""
    from steplog.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


#: Every command that takes runs: RUN (and OTHER) where runs go, OUT for the output.
RUN_COMMANDS = {
    "show": ["show", "RUN", "--json"],
    "tail": ["tail", "RUN", "-n", "3"],
    "plot": ["plot", "RUN", "-k", "loss", "-o", "OUT/plot.png"],
    "compare": ["compare", "RUN", "OTHER"],
    "export": ["export", "RUN", "-o", "-"],
    "replay": ["replay", "RUN", "--jsonl", "OUT"],
    "sync": ["sync", "RUN", "--jsonl", "OUT"],
}


def command_args(command: str, run: str, out: Path, other: str = "other") -> list[str]:
    named = {"RUN": run, "OTHER": other}
    return [named.get(a, a.replace("OUT", str(out))) for a in RUN_COMMANDS[command]]


@pytest.mark.parametrize("command", list(RUN_COMMANDS))
def test_every_command_takes_the_experiment_names_ls_prints(
    command, runs, tmp_path, monkeypatch, capsys
):
    """Each command that takes a run accepts an experiment name as `steplog ls` prints it
    (default root `runs`), with the same result as the experiment's directory `runs/NAME`."""
    if command == "plot" and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("drawing plots needs matplotlib (pip install 'steplog[plot]')")
    monkeypatch.delenv("STEPLOG_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    code, listed, _ = cli(capsys, "ls", "--json")
    assert code == 0
    names = {json.loads(line)["experiment"] for line in listed.splitlines()}
    assert names == {"sweep", "other"}
    results = []
    for form, prefix in (("name", ""), ("dir", "runs/")):
        out = tmp_path / f"out-{form}"
        out.mkdir()
        argv = command_args(command, f"{prefix}sweep", out, f"{prefix}other")
        code, stdout, stderr = cli(capsys, *argv)
        assert code == 0, stderr
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        results.append((stdout.replace(str(out), "OUT"), stderr.replace(str(out), "OUT"), files))
    assert results[0] == results[1]


def test_an_experiment_name_is_its_latest_run_under_root_or_steplog_root(
    runs, tmp_path, monkeypatch, capsys
):
    """NAME means the experiment's most recently written run (as `runs/NAME` does), looked
    up under --root, else $STEPLOG_ROOT, from any working directory; `NAME/` is the same."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("STEPLOG_ROOT", raising=False)
    root = str(runs["root"])
    for spec, latest in (("sweep", "nan"), ("other", "torn"), ("sweep/", "nan")):
        code, out, err = cli(capsys, "show", spec, "--root", root, "--json")
        assert code == 0, err
        assert json.loads(out)["run_id"] == runs[latest].stem
    monkeypatch.setenv("STEPLOG_ROOT", root)
    code, out, err = cli(capsys, "show", "other", "--json")
    assert code == 0, err
    assert json.loads(out)["run_id"] == runs["torn"].stem
    code, out, err = cli(capsys, "compare", "sweep", "other", "-k", "loss")
    assert code == 0, err
    assert out.split("\n", 1)[0].split() == [runs["nan"].stem, runs["torn"].stem]


@pytest.mark.parametrize("command", list(RUN_COMMANDS))
def test_an_unknown_name_is_an_error_listing_the_experiments(
    command, runs, tmp_path, monkeypatch, capsys
):
    """A name that is neither a run id nor an experiment: exit 1, one line naming the
    experiments there are."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(
        capsys, *command_args(command, "swep", tmp_path / "out"), "--root", str(runs["root"])
    )
    assert code == 1
    assert err.startswith(f"steplog {command}: no run matches 'swep'")
    assert "experiments: other, sweep" in err
    assert len(err.splitlines()) == 1


def test_a_missing_root_says_how_to_name_it(tmp_path, monkeypatch, capsys):
    """An experiment name with no run directory under the default root: the error says
    to give --root or set $STEPLOG_ROOT."""
    monkeypatch.delenv("STEPLOG_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "show", "sweep")
    assert code == 1
    assert "no run directory 'runs'" in err
    assert "--root" in err and "$STEPLOG_ROOT" in err


def test_a_name_that_is_an_experiment_and_a_run_id_prefix_is_an_error(runs, capsys):
    """An experiment named like the start of run ids ('2') is not silently either: the
    error says to type `2/` for the experiment or more of the id; `2/` then works."""
    root = runs["root"]
    two = write_run(root, "2", {}, [{"loss": 0.5}])
    code, _, err = cli(capsys, "show", "2", "--root", str(root))
    assert code == 1
    assert "experiment '2'" in err and "prefix of 5 run ids" in err
    assert "'2/'" in err
    code, out, err = cli(capsys, "show", "2/", "--root", str(root), "--json")
    assert code == 0, err
    assert json.loads(out)["run_id"] == two.stem


def test_a_name_that_is_also_a_path_here_is_an_error(runs, tmp_path, monkeypatch, capsys):
    """A bare NAME that is a path in the working directory and an experiment under --root
    (another directory) is an error naming both ways to say which; `./NAME` is the path.
    Where the two are the same directory (`--root .` inside the root) it just works."""
    here = tmp_path / "here"
    mine = write_run(here, "sweep", {}, [{"loss": 0.5}])
    monkeypatch.chdir(here)
    root = str(runs["root"])
    code, _, err = cli(capsys, "show", "sweep", "--root", root)
    assert code == 1
    assert "'./sweep'" in err and repr(str(runs["root"] / "sweep")) in err
    code, out, err = cli(capsys, "show", "./sweep", "--root", root, "--json")
    assert code == 0, err
    assert json.loads(out)["run_id"] == mine.stem
    monkeypatch.chdir(runs["root"])
    code, out, err = cli(capsys, "show", "sweep", "--root", ".", "--json")
    assert code == 0, err
    assert json.loads(out)["run_id"] == runs["nan"].stem


def test_latest_is_ambiguous_next_to_an_experiment_named_latest(runs, capsys):
    """With an experiment named 'latest', `latest` is an error saying how to name either:
    the root directory (its latest run) or ROOT/latest (the experiment)."""
    root = runs["root"]
    write_run(root, "latest", {}, [{"loss": 0.5}])
    code, _, err = cli(capsys, "show", "latest", "--root", str(root))
    assert code == 1
    assert repr(os.path.join(root, "")) in err and repr(str(root / "latest")) in err
    code, out, err = cli(capsys, "show", os.path.join(root, ""), "--json")
    assert code == 0, err
    assert json.loads(out)["experiment"] == "latest"  # the latest run under the root
