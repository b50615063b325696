"""The command line, run as a user would: through a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

import steplog


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steplog", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_writes_a_readable_run_and_reports_cost(tmp_path):
    """`python -m steplog demo` logs to JSONL and prints the path and per-call cost."""
    result = run_cli("demo", "--steps", "20000", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    match = re.search(r"run written to (\S+\.jsonl)", result.stdout)
    assert match, result.stdout
    assert re.search(r"log\(\) cost per call: p50 [\d.]+ µs", result.stdout)
    run = steplog.read_run(match.group(1))
    assert run.status == "finished"
    assert len(run.records) == 20_000
    assert run.config["steps"] == 20_000
    assert "best_loss" in run.summary
    assert min(run.history["loss"]) >= 0.0


def test_no_command_prints_help_and_exits_2():
    """Without a command the CLI prints usage and exits with status 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "demo" in result.stdout


def test_bad_steps_is_a_usage_error(tmp_path):
    """--steps 0 is rejected with a usage error (exit 2)."""
    result = run_cli("demo", "--steps", "0", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "--steps" in result.stderr
