"""A run file as a command opened it (:class:`RunSnapshot`), and the readers that work
on one: its lines, its step records, its last steps, its last resume and summary.

Every reader works on a :class:`RunSnapshot`: the file up to the end of its last
complete line when it was opened. A reader that reads a file several times (the
header, then every record; export's two passes) so describes one set of records while
another process keeps appending. Damaged lines, one rule:

* a torn last line (the writer killed mid-line, or still writing) is left out silently
  (:attr:`RunSnapshot.torn`, :attr:`steplog.Run.torn`);
* a corrupt line before it: the streaming readers (:func:`iter_steps`,
  :func:`last_steps`) skip it and add its number to :attr:`RunSnapshot.corrupt`, for
  the caller to warn about with the count; :func:`steplog.read_run` is strict and
  raises :class:`steplog.RunFileError` naming the line.

A file that is not a steplog run raises :class:`steplog.RunFileError` from
:func:`open_run`, the one place that says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import RunFileError
from .records import (
    CorruptLineError,
    RecordKind,
    is_whole_record,
    kind_of,
    parse_line,
    parse_record,
    step_records,
)
from .schema import RESUME, RUN_END

__all__ = [
    "CHUNK_BYTES",
    "TAIL_BYTES",
    "RunSnapshot",
    "gc_paused",
    "iter_line_blocks",
    "iter_lines",
    "iter_steps",
    "last_resume",
    "last_steps",
    "last_summary",
    "line_number",
    "open_run",
    "read_start",
    "run_config",
]


TAIL_BYTES = 64 * 1024


CHUNK_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a reader builds millions of records.

    The JSON values a reader makes cannot form cycles, yet each dict it allocates
    counts towards the collector's thresholds, and every full collection walks all of
    them again: on a 2 M-step run that was 40 % of the reading time. Collection
    resumes (as it was) when the block ends, whatever happens in it.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclasses.dataclass(slots=True)
class RunSnapshot:
    """A run file as it stood when a command opened it (see the module docstring).

    Attributes:
        path: The run file.
        start: Its run-start record.
        body: Offset of the line after the run-start line.
        end: Readers stop here: after the last complete line at opening time.
        torn: Bytes of an unfinished line followed ``end`` at opening time.
        corrupt: Numbers (from 1) of the corrupt lines readers skipped so far.
        resume: The last resume record, once :func:`last_resume` (or
            :func:`.header.read_header`, in the tail) has found it; see ``resume_known``.
        resume_known: Whether ``resume`` was searched for already (the search can
            read the whole file: done once per snapshot).
    """

    path: Path
    start: dict[str, Any]
    body: int
    end: int
    torn: bool
    corrupt: set[int] = dataclasses.field(default_factory=set)
    resume: dict[str, Any] | None = None
    resume_known: bool = False


def read_start(path: Path) -> dict[str, Any] | None:
    """The run-start record of the file at ``path``, or ``None`` if it has none (not a
    run, empty, or its first line torn)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return None
    record = parse_line(first)
    return record if record is not None and kind_of(record) is RecordKind.RUN_START else None


def open_run(path: Path) -> RunSnapshot:
    """Take a :class:`RunSnapshot` of ``path``: read its first line and find the end of
    its last complete line.

    A last line without its newline counts as complete when it is a whole JSON object
    (as ``read_run`` counts it), else it is torn and left out.

    Raises:
        OSError: The file cannot be read.
        RunFileError: The file is not a steplog run (the one place that says so).
    """
    with open(path, "rb") as f:
        first = f.readline()
        start = parse_line(first)
        if not first.strip():
            raise RunFileError(f"{path}: empty file, not a steplog run")
        if start is None or kind_of(start) is not RecordKind.RUN_START:
            raise RunFileError(f"{path}: not a steplog run file (no run-start record)")
        size = os.fstat(f.fileno()).st_size
        body = len(first)
        end = body
        block = TAIL_BYTES
        while True:  # back from the end until a newline (lines can be megabytes long)
            offset = max(body, size - block)
            f.seek(offset)
            data = f.read(size - offset)
            size = offset + len(data)  # the file may have grown or shrunk meanwhile
            cut = data.rfind(b"\n")
            if cut >= 0 or offset == body:
                end = offset + cut + 1
                tail = data[cut + 1 :]
                break
            block *= 4
    torn = False
    if tail.strip():
        if is_whole_record(tail):
            end = size  # a whole record that only lacks its newline
        else:
            torn = True
    return RunSnapshot(path=path, start=start, body=body, end=end, torn=torn)


def line_number(path: Path, offset: int) -> int:
    """The number (from 1) of the line that starts at byte ``offset`` of ``path``.

    Counts the newlines before it: only for messages about the rare corrupt line.
    """
    count = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count + 1


_RESUME_LINE = b'\n{"type":"' + RESUME.encode() + b'"'


_RUN_END_LINE = b'\n{"type":"' + RUN_END.encode() + b'"'


def last_resume(snapshot: RunSnapshot) -> dict[str, Any] | None:
    """The snapshot's last resume record, or ``None`` if the run was never resumed.

    Searches backwards for a line that starts with the record's type (step records start
    with ``{"step"``), so a never-resumed file is read once, at memory speed, and a
    resumed one only back to its last resume; once per snapshot (the answer is kept in
    it).
    """
    if not snapshot.resume_known:
        snapshot.resume = _search_resume(snapshot)
        snapshot.resume_known = True
    return snapshot.resume


def run_config(snapshot: RunSnapshot) -> dict[str, Any]:
    """The run's config as it stands: the last resume record's (the resuming ``init``'s
    config merged over the run's), else the run-start record's. The one answer that
    ``read_run``, ``scan``, ``show``, ``compare`` and ``init(resume=...)`` give."""
    config = (last_resume(snapshot) or snapshot.start).get("config")
    return config if isinstance(config, dict) else {}


def last_summary(snapshot: RunSnapshot) -> dict[str, Any]:
    """The summary of the snapshot's last run-end record that has one, or ``{}``.

    A segment killed before it could end (no run-end record), or ended by the writer
    process of ``durability="process"`` (a ``"killed"`` run end, which cannot know the
    summary), leaves the run's summary as the last segment that ended with one had it:
    what ``read_run`` reports and what ``init(resume=...)`` starts ``tracker.summary``
    from.
    """
    record = _search_back(
        snapshot,
        _RUN_END_LINE,
        lambda r: kind_of(r) is RecordKind.RUN_END and bool(r.get("summary")),
    )
    summary = (record or {}).get("summary")
    return dict(summary) if isinstance(summary, dict) else {}


def _search_resume(snapshot: RunSnapshot) -> dict[str, Any] | None:
    return _search_back(snapshot, _RESUME_LINE, lambda r: kind_of(r) is RecordKind.RESUME)


def _search_back(
    snapshot: RunSnapshot, needle: bytes, accept: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The last record of the snapshot whose line starts with ``needle`` (which begins
    with the newline before it) and that ``accept`` takes; read backwards in chunks."""
    with open(snapshot.path, "rb") as f:
        end = snapshot.end
        while end > snapshot.body:
            offset = max(snapshot.body - 1, end - CHUNK_BYTES)
            f.seek(offset)
            data = f.read(end - offset)
            hit = data.rfind(needle)
            if hit >= 0:
                line_end = data.find(b"\n", hit + 1)
                if line_end < 0:  # the line runs past this chunk: read it whole
                    f.seek(offset + hit + 1)
                    line = f.readline()
                else:
                    line = data[hit + 1 : line_end]
                record = parse_line(line)
                if record is not None and accept(record):
                    return record
                end = offset + hit  # not a match after all: search before it
                continue
            if offset <= snapshot.body - 1:
                return None
            end = offset + len(needle)  # a match may straddle the chunk boundary
    return None


def last_steps(snapshot: RunSnapshot, count: int) -> list[dict[str, Any]]:
    """The last ``count`` step records of the snapshot.

    Reads backwards from the end in growing blocks, so a long file is not read whole.
    Corrupt lines after the first record returned (or anywhere, when the whole file
    was read) go into ``snapshot.corrupt``.
    """
    path, end = snapshot.path, snapshot.end
    with open(path, "rb") as f:
        block = TAIL_BYTES
        while True:
            offset = max(snapshot.body, end - block)
            f.seek(offset)
            data = f.read(end - offset)
            lines = data.split(b"\n")
            first = 1 if offset > snapshot.body else 0  # the first piece starts mid-line
            steps: list[tuple[int, dict[str, Any]]] = []
            corrupt: list[int] = []
            for index in range(first, len(lines)):
                try:
                    record = parse_record(lines[index])
                except CorruptLineError:
                    corrupt.append(index)
                    continue
                if record is not None and kind_of(record) is RecordKind.STEP:
                    steps.append((index, record))
            whole = offset == snapshot.body
            if len(steps) >= count or whole:
                chosen = steps[-count:] if count else []
                if count == 0:
                    corrupt = []
                elif not (whole and len(steps) <= count):  # the lines shown, not before
                    corrupt = [i for i in corrupt if i > chosen[0][0]]
                if corrupt:
                    base = line_number(path, offset)  # the number of lines[0]
                    snapshot.corrupt.update(base + i for i in corrupt)
                return [record for _, record in chosen]
            block *= 4


def iter_line_blocks(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    start: int | None = None,
) -> Iterator[list[bytes]]:
    """The lines of the snapshot after the run-start line (line 2 onwards), a block of
    lines per chunk read (about ``CHUNK_BYTES``); from byte ``start`` (the first byte of
    a line) instead, if given. Readers that work on many lines at once (the columnar
    reader) take the blocks; the others take :func:`iter_lines`."""
    begin = snapshot.body if start is None else start
    with open(snapshot.path, "rb") as f:
        f.seek(begin)
        left = snapshot.end - begin
        rest = b""
        while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            if progress is not None:
                progress(len(chunk))
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if lines:
                yield lines
        if rest:
            yield [rest]  # a whole record without its newline (see open_run)


def iter_lines(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    start: int | None = None,
) -> Iterator[bytes]:
    """The lines of the snapshot after the run-start line (line 2 onwards), read in
    large chunks; from byte ``start`` (the first byte of a line) instead, if given."""
    for lines in iter_line_blocks(snapshot, progress, start=start):
        yield from lines


def iter_steps(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    others: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Step records of the snapshot (``{"step", "time", "data"}``), in file order.

    Corrupt lines are skipped and their numbers added to ``snapshot.corrupt``. Records
    with a ``type`` (run end, system samples, alerts, newer kinds) are skipped, or
    handed to ``others`` (decoded) as they come.
    """
    lines = iter_lines(snapshot, progress)
    return step_records(lines, 2, snapshot.corrupt, others=others)
