"""Shared test helpers: backends with injected slowness and faults."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from unittest import mock

import pytest

import steplog
from steplog.testing import FailingBackend as FailingBackend
from steplog.testing import GatedBackend
from steplog.testing import SlowBackend as SlowBackend

# Third-party trackers keep their files in a scratch directory and never go online.
_SCRATCH = tempfile.mkdtemp(prefix="steplog-tests-")
os.environ.setdefault("TRACKIO_DIR", os.path.join(_SCRATCH, "trackio"))
os.environ.setdefault("WANDB_MODE", "offline")
# Run files of trackers that are given no JsonlBackend (remote backends always get one).
os.environ.setdefault("STEPLOG_ROOT", os.path.join(_SCRATCH, "runs"))
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONFIG_DIR", os.path.join(_SCRATCH, "wandb-config"))
os.environ.setdefault("WANDB_CACHE_DIR", os.path.join(_SCRATCH, "wandb-cache"))
os.environ.setdefault("WANDB_DIR", os.path.join(_SCRATCH, "wandb"))


# The fault-injecting backends are public (steplog.testing); the tests use them as
# users would.
GateBackend = GatedBackend


def run_script(code: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) as a script in ``tmp_path``; capture its output."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        # A script's default run directory is its own runs/ (not the suite's scratch one).
        env={k: v for k, v in os.environ.items() if k != "STEPLOG_ROOT"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_steplog(
    *args: str, cwd=None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``steplog ARGS`` run in this process (``steplog.cli.main``), its output captured.

    Returns what ``subprocess.run([sys.executable, "-m", "steplog", *args],
    capture_output=True, text=True)`` would, at a fraction of the cost of a new
    interpreter. What a real process would not share with the test is kept apart: the
    working directory (``cwd``), the environment (``env``, the whole of it, as for
    ``subprocess.run``) and the ``steplog`` logger's warnings (which a process prints on
    its stderr through logging's last-resort handler) are set for the call and restored
    after it. Tests of the real process (the entry point, signals, pipes) use
    ``subprocess`` themselves.
    """
    from steplog.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    steplog_logger = logging.getLogger("steplog")
    with contextlib.ExitStack() as stack:
        if env is not None:
            stack.enter_context(mock.patch.dict(os.environ, env, clear=True))
        if cwd is not None:
            stack.callback(os.chdir, os.getcwd())
            os.chdir(cwd)
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        steplog_logger.addHandler(handler)
        stack.callback(steplog_logger.removeHandler, handler)
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["steplog", *args], code, _captured(out), _captured(err))


def _captured(stream: io.TextIOWrapper) -> str:
    """What was written to ``stream``, with newlines as ``text=True`` reads them."""
    stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def stall_mid_drain(gate: GateBackend) -> tuple[steplog.Tracker, steplog.MemoryBackend]:
    """Start a run whose worker is stuck inside a drain on the stalled ``gate``.

    Events 0-7 fill the gate's backlog (``buffer_size=8``); the writer then waits to hand
    it 8-9. The memory backend, which the writer feeds itself before handing a batch to
    the async backends, already has all ten.
    """
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(gate, mem, buffer_size=8, batch_size=2, flush_interval=0.01)
    tracker.init()
    for i in range(10):
        tracker.log({"i": i})
    assert wait_until(lambda: len(mem.records) == 10 and not tracker._buffer.count)
    return tracker, mem


#: Python that makes CPU tensors report ``is_cpu`` False (for a child process's script):
#: steplog then drives them through its accelerator path (kept by reference, gathered
#: and read back in the writer), without an accelerator.
CPU_TENSORS_AS_DEVICE = "torch.Tensor.is_cpu = property(lambda self: False)"


def cpu_tensors_as_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the rest of the test, CPU tensors report ``is_cpu`` False: steplog takes its
    accelerator path for them (what runs on a GPU, checked on CPU). Undone after the
    test by ``monkeypatch``."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.Tensor, "is_cpu", property(lambda self: False))


@pytest.fixture
def runs_root(tmp_path):
    """A fresh run directory."""
    return tmp_path / "runs"


class MlflowServer:
    """A real ``mlflow server`` process on 127.0.0.1 with a sqlite store under ``root``.

    ``start()`` waits until its REST API answers; ``kill()`` ends it at once (SIGKILL,
    as a crash would); ``start()`` again brings it back on the same port and store.
    """

    def __init__(self, root) -> None:
        import shutil
        import socket

        exe = shutil.which("mlflow")
        if exe is None:
            pytest.skip("the mlflow server is not installed (pip install -e '.[dev]')")
        self.exe = exe
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Seconds the last :meth:`start` took until the server answered.
        self.started_in = 0.0

    def start(self, timeout: float = 120) -> None:
        """Start the server and return once it serves the REST API.

        ``timeout`` is a deadline on that state, not a guess of how long a start takes:
        on a busy 2-core machine a restart has taken 37 s (issue #22; 5-10 s on an
        idle one).
        """
        import urllib.error

        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "GIT_PYTHON_REFRESH": "quiet",
        }
        began = time.monotonic()
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.exe, "server",
                    "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                    "--default-artifact-root", str(self.root / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # kill() takes its workers along
            )  # fmt: skip
        deadline = began + timeout
        last: object = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                tail = (self.root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server exited: {tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                tail = (self.root / "server.log").read_text()[-2000:]
                raise RuntimeError(
                    f"mlflow server on port {self.port} did not serve its REST API within "
                    f"{timeout:.0f} s (last: {last}); its log ends: {tail}"
                )
            try:
                # A REST call, as the tests and the tracker make them (it reads the
                # store; /health does not). A slow answer on a busy machine is waited
                # for, not cut off after 1 s and asked again.
                mlflow_api(
                    self.url, "experiments/search", {"max_results": 1}, timeout=min(left, 30)
                )
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = repr(exc)
            else:
                self.started_in = time.monotonic() - began
                return
            time.sleep(0.2)

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """A test that uses the real MLflow server (the ``mlflow_server`` fixture) is slow."""
    for item in items:
        if "mlflow_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite store; yields its URL.

    Started once per test session (5-10 s; more on a busy machine). CI installs mlflow
    through the dev extra; elsewhere the tests that need it skip with the reason.
    """
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


def mlflow_api(
    url: str, path: str, body: dict | None = None, method: str = "GET", *, timeout: float = 30
):
    """Call the MLflow REST API the way any client would (urllib, no mlflow package)."""
    import json
    import urllib.parse
    import urllib.request

    full = f"{url}/api/2.0/mlflow/{path}"
    data = None
    if method == "GET" and body:
        full += "?" + urllib.parse.urlencode(body)
    elif body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(
        full, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"{}")


def find_run(url: str, experiment: str, steplog_id: str) -> dict:
    """The MLflow run tagged with ``steplog_id`` in ``experiment`` (exactly one)."""
    exp = mlflow_api(url, "experiments/get-by-name", {"experiment_name": experiment})
    found = mlflow_api(
        url,
        "runs/search",
        {
            "experiment_ids": [exp["experiment"]["experiment_id"]],
            "filter": f"tags.`steplog.run_id` = '{steplog_id}'",
        },
        method="POST",
    )
    runs = found.get("runs", [])
    assert len(runs) == 1, runs
    return mlflow_api(url, "runs/get", {"run_id": runs[0]["info"]["run_id"]})["run"]


def history(url: str, run_id: str, key: str) -> list[dict]:
    """Every point of metric ``key`` of an MLflow run (all pages)."""
    points, token = [], None
    while True:
        query = {"run_id": run_id, "metric_key": key, "max_results": 25000}
        if token:
            query["page_token"] = token
        answer = mlflow_api(url, "metrics/get-history", query)
        points += answer.get("metrics", [])
        token = answer.get("next_page_token")
        if not token:
            return points


class MlflowProxy:
    """An HTTP proxy in front of an MLflow server. ``refuse(path)`` decides per request:
    ``None`` forwards it, ``(status, headers)`` answers with that instead (an outage,
    a busy server)."""

    def __init__(self, target: str, refuse) -> None:
        import http.server
        import urllib.error
        import urllib.request

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method: str) -> None:
                body = None
                if method == "POST":
                    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = refuse(self.path)
                if answer is not None:
                    status, headers = answer
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = urllib.request.Request(
                    target + self.path, data=body, method=method,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=30) as forwarded:
                        status, payload = forwarded.status, forwarded.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FileRecorder(steplog.Backend):
    """A remote backend that may move to the delivery process: it records what it gets
    in files (JSON lines of events, the run end) that the test reads back, is down while
    the file ``down`` exists next to them, and takes ``delay`` seconds per write."""

    name = "recorder"

    def __init__(self, root, delay: float = 0.0) -> None:
        self.root = str(root)
        self.delay = delay
        self.opened_in: int | None = None

    async def open(self, run: steplog.RunInfo) -> None:
        import anyio

        os.makedirs(self.root, exist_ok=True)
        self.opened_in = os.getpid()
        await anyio.sleep(0)
        with open(os.path.join(self.root, "opens"), "a") as f:
            f.write(f"{os.getpid()} {run.run_id}\n")

    async def write(self, events) -> None:
        import json

        import anyio

        if os.path.exists(os.path.join(self.root, "down")):
            raise ConnectionError("down (injected)")
        if self.delay:
            await anyio.sleep(self.delay)
        with open(os.path.join(self.root, "events.jsonl"), "a") as f:
            for event in events:
                f.write(json.dumps([event.step, event.data]) + "\n")

    async def close(self, end: steplog.RunEnd) -> None:
        import json

        with open(os.path.join(self.root, "ends"), "a") as f:
            f.write(json.dumps([os.getpid(), end.status, dict(end.summary)]) + "\n")

    def steps(self) -> list[int]:
        import json

        try:
            with open(os.path.join(self.root, "events.jsonl")) as f:
                return [json.loads(line)[0] for line in f]
        except FileNotFoundError:
            return []

    def ends(self) -> list[list]:
        import json

        try:
            with open(os.path.join(self.root, "ends")) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []


#: Whether ``Tracker.log`` is the compiled fast path (``steplog._speedups``); .ci/run
#: checks that it was built, so that CI runs both paths.
COMPILED = not hasattr(steplog.Tracker.log, "__code__")


@pytest.fixture(params=["compiled", "python"])
def log_impl(request, monkeypatch):
    """Run the test with each of ``log()``'s two implementations: the compiled fast
    path, and the pure-Python one (``_log_py``: the fallback and the reference)."""
    from steplog.tracker import _TrackerBase

    if request.param == "python":
        monkeypatch.setattr(_TrackerBase, "log", _TrackerBase._log_py)
    elif not COMPILED:
        pytest.skip("steplog._speedups was not built (no C compiler at install time)")
    return request.param
