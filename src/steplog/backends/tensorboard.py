"""TensorBoard event files (``steplog[tensorboard]``).

Writes TensorBoard's own format directly — TFRecord-framed ``Event`` protocol buffers —
with a small encoder, so neither TensorFlow nor torch nor tensorboardX is needed, and a
batch of 1 000 events costs a few milliseconds of the worker's time. The only dependency
is ``crc32c`` (a C implementation of the record checksums).

Layout: ``<logdir>/<experiment>/<run id>/events.out.tfevents.<start>.<host>.steplog``, so
``tensorboard --logdir <logdir>`` shows every run, grouped by experiment. A resumed run
(``init(resume=...)``) adds a file of its own to that directory,
``events.out.tfevents.<time>.<host>.<pid>.<segment>.steplog``, as TensorBoard's own
writers do after a restart, and leaves the earlier ones as they are: TensorBoard reads
the files of a run directory in name order and merges them, so ``<time>`` is made to
sort after every file already there (also when the resume comes within the same second,
or from a machine whose clock is behind). The first event of every file says
``brain.Event:2``, and no file holds a ``SessionLog.START``: TensorBoard purges
"orphaned" points only on such a restart marker, so nothing the earlier files hold is
dropped.

Mapping: each ``log()`` call becomes one event at its step and logging time, holding a
scalar per numeric value (ints, floats, bools as 0/1; nested keys joined with ``/``;
stored as float32, TensorBoard's scalar type — NaN and ±inf included) and, with
``text=True`` (default), a text summary per string value. Lists and other values are not
written (they stay in the JSONL file). The config is written once as a text summary
``config`` (JSON) at the start; at the end, numeric summary values become scalars
``summary/<key>`` at the last step and the rest a text summary ``summary``.

A run that is not resumed — a new run, or a replay or sync of a recorded one — truncates
its first file when it opens it and removes the files of resumed segments that an earlier
writer left in the run's directory, so replaying a run into the same log directory
rewrites it instead of doubling every point.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from .._extras import require
from ..events import Event, RunEnd, RunInfo
from ..runfile.schema import flatten
from .base import Backend

__all__ = ["TensorBoardBackend"]

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FLOAT32_MAX = 3.4028234663852886e38
# An event file's name (tensorboard/summary/writer/event_file_writer.py), and ours.
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")
_OWN_SUFFIX = ".steplog"


class TensorBoardBackend(Backend):
    """Write scalars (and text) to TensorBoard event files.

    Args:
        logdir: Root directory (``tensorboard --logdir`` points here).
        text: Also write string values as text summaries.

    Each batch is written with one ``write`` call, so TensorBoard, which polls the
    file, sees whole events. A write that fails part-way is resumed by the retry after
    the bytes that made it; a batch given up is cut back to its last whole record.
    """

    name = "tensorboard"

    def __init__(self, logdir: str | os.PathLike[str] = "runs-tb", *, text: bool = True) -> None:
        crc = require("crc32c", "tensorboard", "TensorBoardBackend")
        self._crc = crc.crc32c
        self.logdir = Path(logdir)
        self.text = text
        self.path: Path | None = None
        self._fd: int | None = None
        self._last_step = 0
        self._pending: _Pending | None = None

    def __repr__(self) -> str:
        return f"TensorBoardBackend({str(self.logdir)!r})"

    async def open(self, run: RunInfo) -> None:
        directory = self.logdir / run.experiment / run.run_id
        directory.mkdir(parents=True, exist_ok=True)
        host = "".join(c if c.isalnum() or c in "-_" else "_" for c in run.host)
        resumed = run.resumed
        if resumed is None:
            self.path = directory / f"events.out.tfevents.{int(run.start_time)}.{host}.steplog"
            _remove_segment_files(directory, keep=self.path)
            flags = os.O_TRUNC
            opened, first_step = run.start_time, 0
        else:
            # A file of its own after the others: the earlier segments' points stay
            # where they are, whatever the resume writes.
            stamp = max(int(resumed.resume_time), _newest_stamp(directory) + 1)
            name = f"events.out.tfevents.{stamp}.{host}.{run.pid}.{resumed.segment}.steplog"
            self.path = directory / name
            flags = os.O_EXCL
            opened, first_step = resumed.resume_time, resumed.step
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
        # The summary goes at the run's last step, also when the resumed segment logs
        # nothing (step 0 would put it before the earlier segments' points).
        self._last_step = max(first_step - 1, 0)
        self._pending = None
        first = _event(opened, 0, file_version=b"brain.Event:2")
        config = _text_value("config", _json_block(run.config)) if run.config else b""
        out = self._record(first)
        if config:  # a resumed segment's config (merged) at its first step
            out += self._record(_event(opened, first_step, summary=config))
        os.write(self._fd, out)

    async def write(self, events: Sequence[Event]) -> None:
        assert self._fd is not None, "write() before open()"
        if self._pending is not None:
            if self._pending.batch is events:  # a retry (Backend.write): resume
                self._write_pending()
                return
            self._cut_back()  # the batch that failed was given up
        chunks = []
        text = self.text
        for step, stamp, data in events:
            values = _values(data, "", text)
            if values:
                chunks.append(self._record(_event(stamp, step, summary=b"".join(values))))
        if events:
            self._last_step = max(self._last_step, events[-1].step)
        if chunks:
            self._pending = _Pending(events, chunks, os.lseek(self._fd, 0, os.SEEK_CUR))
        self._write_pending()

    def _write_pending(self) -> None:
        """Write the pending batch; after a failure, a retry resumes where it stopped."""
        pending = self._pending
        if pending is None:
            return
        view = pending.data[pending.written :]
        while view:
            written = os.write(self._fd, view)  # type: ignore[arg-type]
            pending.written += written
            view = view[written:]
        self._pending = None

    def _cut_back(self) -> None:
        """Give up a batch written in part: cut the file back to its last whole record
        (TensorBoard stops reading a file at a torn record)."""
        pending, self._pending = self._pending, None
        if pending is None or self._fd is None:
            return
        kept = max((end for end in pending.ends if end <= pending.written), default=0)
        os.ftruncate(self._fd, pending.start + kept)
        os.lseek(self._fd, pending.start + kept, os.SEEK_SET)

    async def close(self, end: RunEnd) -> None:
        if self._fd is None:
            return
        try:
            self._cut_back()
            values = []
            other: dict[str, Any] = {}
            for key, value in flatten(end.summary, sep="/").items():
                if _is_scalar(value):
                    values.append(_scalar_value(f"summary/{key}", value))
                else:
                    other[key] = value
            if other:
                values.append(_text_value("summary", _json_block(other)))
            if values:
                record = _event(end.end_time, self._last_step, summary=b"".join(values))
                _write_all(self._fd, self._record(record))
        finally:
            os.close(self._fd)
            self._fd = None

    def _record(self, data: bytes) -> bytes:
        """TFRecord framing: length, masked CRC of the length, data, masked CRC of data."""
        header = _U64.pack(len(data))
        return (
            header + _U32.pack(_mask(self._crc(header))) + data + _U32.pack(_mask(self._crc(data)))
        )


class _Pending:
    """A batch's records on their way to the file: what a retry resumes."""

    __slots__ = ("batch", "data", "ends", "start", "written")

    def __init__(self, batch: Sequence[Event], chunks: list[bytes], start: int) -> None:
        self.batch = batch
        self.data = memoryview(b"".join(chunks))
        self.ends = list(itertools.accumulate(map(len, chunks)))
        self.start = start
        self.written = 0


def _newest_stamp(directory: Path) -> int:
    """The largest ``<time>`` among the event files in ``directory`` (0 if none)."""
    stamps = (_EVENT_FILE.match(entry.name) for entry in os.scandir(directory))
    return max((int(found.group(1)) for found in stamps if found), default=0)


def _remove_segment_files(directory: Path, *, keep: Path) -> None:
    """Remove the files steplog wrote in a run's directory, but ``keep``: a run opened
    afresh (a replay) rewrites the whole run into ``keep``."""
    for entry in os.scandir(directory):
        if (
            entry.name != keep.name
            and entry.name.endswith(_OWN_SUFFIX)
            and _EVENT_FILE.match(entry.name)
            and entry.is_file(follow_symlinks=False)
        ):
            os.unlink(entry.path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- protocol buffer encoding (tensorflow/core/util/event.proto, summary.proto) --------


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(
    wall_time: float, step: int, *, summary: bytes = b"", file_version: bytes = b""
) -> bytes:
    out = b"\x09" + _DOUBLE.pack(wall_time)  # 1: wall_time (double)
    if step:
        out += b"\x10" + _varint(int(step))  # 2: step (int64)
    if file_version:
        out += _field(3, file_version)  # 3: file_version
    if summary:
        out += _field(5, summary)  # 5: summary { repeated value = 1 }
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    number = float(value)
    if math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        number = math.copysign(math.inf, number)  # beyond float32: store as ±inf
    body = _field(1, tag.encode()) + b"\x15" + _FLOAT.pack(number)  # 2: simple_value
    return _field(1, body)


_TEXT_METADATA = _field(9, _field(1, _field(1, b"text")))  # metadata.plugin_data.plugin_name


def _text_value(tag: str, text: str) -> bytes:
    # TensorProto: dtype = DT_STRING (7), scalar shape, string_val
    tensor = b"\x08\x07" + _field(2, b"") + _field(8, text.encode())
    body = _field(1, tag.encode()) + _TEXT_METADATA + _field(8, tensor)
    return _field(1, body)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float))


def _values(data: Mapping[str, Any], prefix: str, text: bool) -> list[bytes]:
    out = []
    for key, value in data.items():
        tag = f"{prefix}{key}"
        if isinstance(value, (int, float)):
            out.append(_scalar_value(tag, value))
        elif isinstance(value, str):
            if text:
                out.append(_text_value(tag, value))
        elif isinstance(value, Mapping):
            out.extend(_values(value, f"{tag}/", text))
    return out


def _json_block(value: Any) -> str:
    """JSON in a Markdown code block: TensorBoard's text plugin renders Markdown."""
    body = orjson.dumps(
        value, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    ).decode()
    return f"```json\n{body}\n```"
