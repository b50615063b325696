"""Every Python example in README.md and docs/*.md runs as a reader would paste it.

Each ```python block runs in a fresh interpreter whose working directory is a temporary
folder (so the ``runs/`` files it writes land there). A block that needs names from the
text around it gets a hidden prelude from ``_PRELUDES`` below; keep those few and small,
and prefer fixing the block so it runs as pasted. A block that cannot run here (a GPU, an
account, a remote server) is marked in the markdown, right before its fence, with
``<!-- docs-test: skip (the reason) -->`` and reported as skipped with that reason.
Other fences (bash, text, json) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Seconds one block may run. The whole file should stay well under a minute on 2 cores.
BLOCK_TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"<!--\s*docs-test:(?P<body>.*?)-->")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>.+)\)\s*$")

# Stand-ins for names a block takes from the text around it, keyed by (file, a snippet
# that occurs in exactly one of its blocks). Each prelude runs before its block.
_PRELUDES: dict[tuple[str, str], str] = {
    # Reading a run back: the run file that the page's first example wrote.
    ("docs/quickstart.md", "steplog.read_run(path)"): """
        import steplog

        _tracker = steplog.Tracker(experiment_name="gcg")
        with _tracker.run({"optimizer": "GCG"}):
            _tracker.log({"loss": 0.5})
    """,
    # A training-loop fragment: a CPU "model" whose loss is a fresh tensor each step.
    ("docs/tensors.md", "acc += loss.detach()"): """
        import steplog
        import torch

        n_steps = 100
        weight = torch.ones(8, requires_grad=True)
        gnorm = torch.tensor(0.0)
        acc = torch.zeros(())


        def train_step():
            return (weight * torch.rand(8)).sum()


        tracker = steplog.Tracker(steplog.MemoryBackend())
        tracker.init({})
    """,
    # tropt's optimizers need a model and transformers: a stand-in that drives the tracker
    # the way tropt's optimizers do (init with the config, log() per step, finish).
    ("docs/integrations.md", "SteplogTracker("): """
        model, loss, prompts = "gpt2", "nll", ["hello"]


        class SomeOptimizer:
            def __init__(self, model, loss, *, tracker):
                self.tracker = tracker

            def optimize(self, prompts):
                self.tracker.init({"optimizer": "Some", "prompts": prompts})
                for step in range(50):
                    self.tracker.log({"loss": 1 / (step + 1)})
                self.tracker.finish({"best_loss": 0.02})
    """,
}

# Packages a block needs that the dev extra does not install (the test skips without them).
_NEEDS: dict[tuple[str, str], str] = {
    ("docs/integrations.md", "SteplogTracker("): "tropt",
}


@dataclass(frozen=True)
class DocBlock:
    """One ```python block: where it is, its code, and why it is skipped (if it is)."""

    path: str
    line: int
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def _blocks(text: str, path: str) -> list[DocBlock]:
    """The python blocks of one markdown text, with the skip marker right before each."""
    lines = text.splitlines()
    found: list[DocBlock] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        ticks, indent = fence["ticks"], fence["indent"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        if fence["info"].strip().split(" ")[0] in ("python", "py", "python3"):
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            found.append(DocBlock(path, i + 1, "\n".join(body) + "\n", _skip_reason(lines, i)))
        i = end + 1
    return found


def _skip_reason(lines: list[str], fence: int) -> str | None:
    """The reason of a ``docs-test: skip (...)`` comment on the last non-blank line before."""
    before = fence - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    marker = _MARKER.search(lines[before]) if before >= 0 else None
    if marker is None:
        return None
    skip = _SKIP.match(marker["body"])
    if skip is None:
        raise ValueError(f"unknown docs-test marker {marker[0]!r} (want 'skip (reason)')")
    return skip["reason"].strip()


def _keyed(table: dict[tuple[str, str], str], block: DocBlock) -> str | None:
    for (path, snippet), value in table.items():
        if path == block.path and snippet in block.code:
            return value
    return None


BLOCKS = [
    block
    for file in DOC_FILES
    for block in _blocks(file.read_text(encoding="utf-8"), file.relative_to(ROOT).as_posix())
]


def test_docs_have_python_blocks() -> None:
    """The collector finds the README's and the docs' examples (a broken parser finds none)."""
    paths = {block.path for block in BLOCKS}
    assert "README.md" in paths
    assert "docs/quickstart.md" in paths


def test_collector_reads_fences_and_skip_markers() -> None:
    """Python blocks are found with their fence line; a marker right before one skips it."""
    text = textwrap.dedent(
        """\
        # Title

        ```python
        x = 1
        ```

        <!-- docs-test: skip (needs a CUDA GPU) -->

        ```python
        torch.ones(1, device="cuda")
        ```

        ```bash
        pip install steplog
        ```
        """
    )
    blocks = _blocks(text, "docs/x.md")
    assert [(b.id, b.code, b.skip) for b in blocks] == [
        ("docs/x.md:3", "x = 1\n", None),
        ("docs/x.md:9", 'torch.ones(1, device="cuda")\n', "needs a CUDA GPU"),
    ]
    with pytest.raises(ValueError, match="unknown docs-test marker"):
        _blocks("<!-- docs-test: skp -->\n```python\npass\n```\n", "docs/x.md")


@pytest.mark.parametrize("table", [_PRELUDES, _NEEDS], ids=["preludes", "needs"])
def test_every_stand_in_matches_one_block(table: dict[tuple[str, str], str]) -> None:
    """Each prelude or requirement still names exactly one block (none left stale)."""
    for path, snippet in table:
        matching = [b.id for b in BLOCKS if b.path == path and snippet in b.code]
        assert len(matching) == 1, f"{path}: {snippet!r} matches {matching}"


@pytest.mark.parametrize(
    "block",
    [
        # A fresh interpreter per block: README's are the fast tier's smoke test of what
        # a user types first, the docs' blocks (fits, servers, plots among them) are slow.
        pytest.param(
            block, id=block.id, marks=() if block.path == "README.md" else pytest.mark.slow
        )
        for block in BLOCKS
    ],
)
def test_doc_block_runs(block: DocBlock, tmp_path: Path) -> None:
    """The block runs to completion in a fresh interpreter, with no traceback printed."""
    if block.skip is not None:
        pytest.skip(block.skip)
    needs = _keyed(_NEEDS, block)
    if needs is not None:
        pytest.importorskip(needs)
    prelude = textwrap.dedent(_keyed(_PRELUDES, block) or "")
    # Padded with newlines so that a traceback names the markdown file and its line.
    (tmp_path / "prelude.py").write_text(prelude)
    (tmp_path / "block.py").write_text("\n" * block.line + block.code)
    runner = (
        "import sys\n"
        "exec(compile(open('prelude.py').read(), sys.argv[1], 'exec'))\n"
        "exec(compile(open('block.py').read(), sys.argv[2], 'exec'))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "STEPLOG_ROOT"},  # runs/ is here
        "PYTHONUNBUFFERED": "1",
        # Third-party trackers write into the temporary folder and never go online.
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "TRACKIO_DIR": str(tmp_path / "trackio"),
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        [sys.executable, "-c", runner, "<docs-test prelude>", str(ROOT / block.path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    if proc.returncode != 0:
        pytest.fail(f"{block.id} exited {proc.returncode}\n{output}", pytrace=False)
    if "Traceback" in proc.stderr:
        pytest.fail(f"{block.id} printed a traceback\n{output}", pytrace=False)
