"""Arrays and tensors: a snapshot at ``log()`` time, conversion in the writer thread.

steplog never imports torch, numpy or jax to recognise their values: it looks at the
module of a value's type, and reaches a library through ``sys.modules`` only once one of
its values has been logged (so the library is already imported).

At ``log()`` time (:func:`snapshot`, only for dicts holding something other than plain
numbers and strings):

* a CPU torch tensor with 0 dimensions becomes a Python number at once (``.item()`` on a
  CPU tensor has no device to wait for; ~0.2 µs);
* the 0-dimensional tensors on an accelerator are detached and stacked into one tensor,
  one kernel launch per log() call (per device and dtype), instead of a ``clone()``
  each; other accelerator tensors and n-dimensional CPU tensors are cloned (one launch
  each on an accelerator);
* numpy arrays are copied; jax arrays are immutable and kept as they are;
* tensors and arrays with more than ``max_array_size`` elements are summarised instead
  (shape, dtype, element count, mean, min, max), computed on the value's own device;
* lists, tuples and dicts holding any of these are copied along the way.

Nothing on that path synchronises with an accelerator: no ``.item()``, ``.cpu()``,
``.tolist()`` or ``float()`` on a device tensor. What must still be read from a device
is left in the data as a :class:`Deferred` placeholder, and the event is marked.

In the writer thread (:func:`resolve`, called by ``_readback.Readback`` after each drain), the
placeholders of a whole batch are read back together: for each CUDA device, every
source is copied to host memory asynchronously behind a wait on the streams that
produced it, then one stream synchronisation (which releases the GIL) makes them all
available — one device synchronisation per batch and device, however many events and
values it holds. Values then become Python numbers (0-d) or nested lists, with their
kind kept: integers stay ``int``, booleans ``bool``, NaN and infinities stay floats.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._options import MAX_DEPTH  # containers nested deeper are not walked (nor encoded)

__all__ = [
    "DEFER_KEY",
    "Deferred",
    "NotNow",
    "ResolveStats",
    "convert_now",
    "host_reader",
    "libraries_loaded",
    "plain_types",
    "pop_deferred",
    "resolve",
    "snapshot",
]

logger = logging.getLogger("steplog")

#: Key under which ``log()`` lists an event's :class:`Deferred` placeholders.
DEFER_KEY = "\x00steplog.deferred"

_LIBRARIES = ("torch", "numpy", "jax")
_BASE_PLAIN: frozenset[type] = frozenset({float, int, str, bool, type(None)})
_plain: frozenset[type] = _BASE_PLAIN
_numpy_seen = False

#: How often a worker waiting for ``torch.cuda.set_sync_debug_mode(0)`` checks again.
_SYNC_DEBUG_POLL_SECONDS = 0.05


def plain_types() -> frozenset[type]:
    """Types ``log()`` stores as they are: immutable, and encoded by orjson directly."""
    return _plain


def _importing(module: Any) -> bool:
    """Whether ``module`` is still being imported (by some thread)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def libraries_loaded() -> bool:
    """Whether torch, numpy or jax is imported (so logged values may need a snapshot).

    Also teaches :func:`plain_types` numpy's scalar types once numpy is imported: they
    are immutable and need no snapshot.
    """
    global _plain, _numpy_seen
    numpy = sys.modules.get("numpy")
    # numpy is in sys.modules from the moment another thread starts importing it: its
    # scalar types are learnt once it has finished (until then, nothing is plain).
    if numpy is not None and not _numpy_seen and not _importing(numpy):
        try:
            scalar_types = {
                tp
                for tp in set(numpy.sctypeDict.values())
                if issubclass(tp, numpy.generic) and not issubclass(tp, (numpy.void, numpy.object_))
            }
        except (AttributeError, TypeError):  # not a numpy we know, or half-imported
            pass
        else:
            _plain = _BASE_PLAIN | frozenset(scalar_types)
            _numpy_seen = True
    modules = sys.modules
    return any(name in modules for name in _LIBRARIES)


class Deferred:
    """A value left in an event's data for the worker to read back and convert.

    Attributes:
        container: The dict or list holding the placeholder.
        key: Its key (or index) in ``container``.
        kind: ``"ref"`` (a device tensor kept by reference: never changed in place
            before the call), ``"scalar"`` (element ``index`` of a stacked device
            tensor), ``"tensor"``, ``"summary"`` (a stacked ``[mean, min, max]`` of a
            large tensor), ``"numpy"`` or ``"jax"``.
        source: The tensor or array to read (for ``"scalar"``: the stacked tensor).
        index: Position in a stacked tensor.
        stream: The CUDA stream that produced ``source``, if any.
        meta: Shape and dtype of a summarised value.
    """

    __slots__ = (
        "changed",
        "container",
        "index",
        "key",
        "kind",
        "meta",
        "source",
        "stream",
    )

    def __init__(self, container: Any, key: Any, kind: str, source: Any, index: int = 0) -> None:
        self.container = container
        self.key = key
        self.kind = kind
        self.source = source
        self.index = index
        self.stream: Any = None
        self.meta: dict[str, Any] | None = None
        self.changed = False

    def __repr__(self) -> str:
        return f"<steplog.Deferred {self.kind}>"


class _Walk:
    """State of one snapshot: collected placeholders and device scalars to stack."""

    __slots__ = ("active", "deferred", "max_size", "scalars")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.deferred: list[Deferred] = []
        self.scalars: list[tuple[Any, Deferred]] = []
        self.active: dict[int, Any] = {}  # containers being walked -> their copies


def snapshot(data: dict[str, Any], *, max_array_size: int) -> dict[str, Any]:
    """Make ``data`` (``log()``'s own copy) independent of later in-place changes.

    Returns ``data`` with arrays and tensors replaced as described in the module
    docstring; if placeholders remain, they are listed under :data:`DEFER_KEY`.
    """
    walk = _Walk(max_array_size)
    plain = _plain
    for key, value in data.items():
        if type(value) not in plain:
            # Top-level placeholders name no container (None: this dict), so that a
            # queued event is no reference cycle for the garbage collector to chase.
            data[key] = _snap(value, None, key, walk)
    if walk.scalars:
        _stack_scalars(walk)
    if walk.deferred:
        data[DEFER_KEY] = walk.deferred
    return data


def _snap(value: Any, container: Any, key: Any, walk: _Walk) -> Any:
    tp = type(value)
    if tp in _plain:
        return value
    if tp is dict or tp is list or tp is tuple:
        # A container inside itself maps to its own copy, so the copy keeps the cycle
        # (the encoder reports it); absurdly deep nesting is left as it is.
        active = walk.active
        if id(value) in active:
            return active[id(value)]
        if len(active) >= MAX_DEPTH:
            return value
        copy: Any = {} if tp is dict else []
        active[id(value)] = copy
        try:
            if tp is dict:
                # list(): one C-level read, so another thread changing the dict meanwhile
                # cannot make this walk raise (what it read is recorded).
                for k, v in list(value.items()):
                    copy[k] = _snap(v, copy, k, walk)
            else:
                copy.extend(value)
                for i, v in enumerate(value):
                    copy[i] = _snap(v, copy, i, walk)
            return copy
        finally:
            del active[id(value)]
    kind = _kinds.get(tp)
    if kind is None:
        kind = _kinds[tp] = _kind_of(tp)
    if kind == _TORCH:
        if value.is_cpu:
            if value.dim() == 0:
                return value.item()  # no device to wait for; ~0.15 µs
        elif (
            value._version == 0  # never changed in place; reading it launches nothing
            and not value.requires_grad
            and value.numel() <= walk.max_size
        ):
            # Kept by reference, no kernel launch: the writer checks the version again
            # before and after it reads the value, and marks it if it changed (see
            # docs/tensors.md). Listed as a bare tuple; the writer makes the placeholder.
            walk.deferred.append((container, key, value))  # type: ignore[arg-type]
            return value
        return _snap_tensor(sys.modules["torch"], value, container, key, walk)
    if kind == _NUMPY:
        return _snap_numpy(sys.modules["numpy"], value, container, key, walk)
    if kind == _JAX:
        placeholder = Deferred(container, key, "jax", value)
        walk.deferred.append(placeholder)
        return placeholder
    return value  # anything else: orjson or repr() in the worker


_OTHER, _TORCH, _NUMPY, _JAX = range(4)
_kinds: dict[type, int] = {}  # memo: what kind of value a type is


def _kind_of(tp: type) -> int:
    # Subclasses count too (a Parameter, another package's tensor subclass), so ask the
    # loaded libraries rather than trusting the module name alone.
    modules = sys.modules
    torch = modules.get("torch")
    if torch is not None and issubclass(tp, torch.Tensor):
        return _TORCH
    numpy = modules.get("numpy")
    if numpy is not None and issubclass(tp, numpy.ndarray):
        return _NUMPY
    jax = modules.get("jax")
    if tp.__module__.partition(".")[0] in ("jax", "jaxlib") or (
        jax is not None
        and isinstance(getattr(jax, "Array", None), type)
        and issubclass(tp, jax.Array)
    ):
        return _JAX
    return _OTHER


class NotNow(Exception):
    """Raised by :func:`host_value` for a value ``log()`` must snapshot instead."""


def host_reader(max_size: int) -> Callable[[Any], Any]:
    """An ``orjson`` ``default=`` hook for values that need no device read.

    ``log()``'s second try after its strict fast path: CPU tensors, numpy arrays and
    numpy scalars of up to ``max_size`` elements are converted on the spot (reading
    them *is* the snapshot). Anything else — accelerator tensors, larger values, jax
    arrays, other types — raises :class:`NotNow`, and the event takes the snapshot path.
    """
    kinds = _kinds

    def host_value(value: Any) -> Any:
        tp = type(value)
        kind = kinds.get(tp)
        if kind is None:
            kind = kinds[tp] = _kind_of(tp)
        if kind == _TORCH:
            if value.is_cpu:
                if value.dim() == 0:
                    return value.item()
                if value.numel() <= max_size:
                    return value.tolist()
        elif kind == _NUMPY:
            if value.size <= max_size:
                return _numpy_to_python(value)
        elif tp in _plain and tp.__module__ == "numpy":
            return value.item()
        raise NotNow

    return host_value


def _snap_tensor(torch: Any, value: Any, container: Any, key: Any, walk: _Walk) -> Any:
    on_host = value.is_cpu
    if not on_host and value._version == 0 and value.numel() <= walk.max_size:
        # A fresh device tensor that carries an autograd graph (the others are listed
        # by _snap): detached — a view sharing the version counter, no launch — so the
        # graph is not kept alive, and kept by reference like them.
        placeholder = Deferred(container, key, "ref", value.detach())
        placeholder.stream = _current_stream(torch, value.device)
        walk.deferred.append(placeholder)
        return placeholder
    tensor = value.detach()  # never keep an autograd graph alive
    if tensor.dim() == 0:
        placeholder = Deferred(container, key, "scalar", None)
        walk.scalars.append((tensor, placeholder))
        walk.deferred.append(placeholder)
        return placeholder
    if tensor.numel() > walk.max_size:
        placeholder = Deferred(container, key, "summary", _tensor_stats(torch, tensor))
        placeholder.meta = {"shape": list(tensor.shape), "dtype": str(tensor.dtype)[6:]}
    else:
        placeholder = Deferred(container, key, "tensor", tensor.clone())
    if not on_host:
        placeholder.stream = _current_stream(torch, tensor.device)
    walk.deferred.append(placeholder)
    return placeholder


def _tensor_stats(torch: Any, tensor: Any) -> Any:
    """[mean, min, max] as one float64 tensor, on the tensor's device (no sync)."""
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    if tensor.is_complex():
        tensor = tensor.abs()
    return torch.stack(
        [
            tensor.mean(dtype=torch.float64),
            tensor.min().to(torch.float64),
            tensor.max().to(torch.float64),
        ]
    )


def _snap_numpy(numpy: Any, value: Any, container: Any, key: Any, walk: _Walk) -> Any:
    if value.size > walk.max_size:
        placeholder = Deferred(container, key, "numpy", None)
        placeholder.meta = _numpy_summary(numpy, value)
    else:
        placeholder = Deferred(container, key, "numpy", value.copy())
    walk.deferred.append(placeholder)
    return placeholder


def _numpy_summary(numpy: Any, value: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "shape": list(value.shape),
        "dtype": str(value.dtype),
        "numel": int(value.size),
    }
    try:
        data = value.astype(numpy.float64)
        summary.update(mean=float(data.mean()), min=float(data.min()), max=float(data.max()))
    except (TypeError, ValueError):  # strings, objects: no statistics
        pass
    return summary


def _stack_scalars(walk: _Walk) -> None:
    torch = sys.modules["torch"]
    groups: dict[tuple[Any, Any], list[tuple[Any, Deferred]]] = {}
    for tensor, placeholder in walk.scalars:
        groups.setdefault((tensor.device, tensor.dtype), []).append((tensor, placeholder))
    for (device, _), members in groups.items():
        # One launch for all of this call's scalars on this device and dtype.
        stacked = torch.stack([tensor for tensor, _ in members])
        stream = _current_stream(torch, device)
        for index, (_, placeholder) in enumerate(members):
            placeholder.source = stacked
            placeholder.index = index
            placeholder.stream = stream


_streams: dict[Any, Any] = {}  # device -> its stream, looked up once per device


def _current_stream(torch: Any, device: Any) -> Any:
    """The stream that produced a device value (cached: ``current_stream()`` costs ~3.5 µs).

    The cache holds the stream current at the first ``log()`` on each device; code that
    produces logged tensors on other streams should synchronise them first (see
    docs/tensors.md).
    """
    if device.type != "cuda":
        return None
    stream = _streams.get(device)
    if stream is None:
        stream = _streams[device] = torch.cuda.current_stream(device)
    return stream


# -- writer side -------------------------------------------------------------------


class ResolveStats:
    """Counts kept by the writer about device reads."""

    __slots__ = ("changed", "changed_reported", "device_copies", "device_syncs", "large_reported")

    def __init__(self) -> None:
        self.device_syncs = 0
        self.device_copies = 0
        self.changed = 0
        self.large_reported: set[str] = set()
        self.changed_reported: set[str] = set()


def resolve(deferred: Sequence[Deferred], stats: ResolveStats, *, max_array_size: int) -> None:
    """Read every placeholder of a batch back and put the converted values in place.

    Blocking: run it in a worker thread. Device values are read with one
    synchronisation per device (see the module docstring).
    """
    try:
        hosts = _read_devices(deferred, stats)
    except Exception as exc:  # one unreadable source must not cost the batch
        logger.warning(
            "steplog: reading a batch of tensors at once failed (%r); reading them one by one", exc
        )
        hosts = _read_one_by_one(deferred, stats)
    jax_values = _read_jax([d for d in deferred if d.kind == "jax"])
    for placeholder in deferred:
        try:
            value = _convert(placeholder, hosts, jax_values, max_array_size, stats)
        except Exception as exc:  # never let one odd value stop the batch
            logger.warning("steplog: could not convert a %s value: %r", placeholder.kind, exc)
            value = f"<unreadable {placeholder.kind}: {exc!r}>"
        if placeholder.changed:
            value = {"$changed": value}
            _report_changed(placeholder, stats)
        placeholder.container[placeholder.key] = value


_DEVICE_KINDS = ("ref", "scalar", "tensor", "summary")


def _read_devices(deferred: Sequence[Deferred], stats: ResolveStats) -> dict[int, Any]:
    """Read every tensor source of a batch; returns host tensors keyed by id(source).

    Per device and dtype, every source is flattened into one tensor (one launch), copied
    into pinned host memory asynchronously (one copy) behind a wait on the streams that
    produced them, and each device is synchronised once: O(1) device work per batch,
    however many events it holds. References are checked against the version they had
    at the ``log()`` call before the copy is queued and after the synchronisation.
    """
    sources: dict[int, Any] = {}
    refs: list[Deferred] = []
    for placeholder in deferred:
        if placeholder.kind in _DEVICE_KINDS:
            sources.setdefault(id(placeholder.source), placeholder.source)
            if placeholder.kind == "ref":
                refs.append(placeholder)
    if not sources:
        return {}
    _check_versions(refs)
    torch = sys.modules["torch"]
    groups: dict[tuple[Any, Any], list[Any]] = {}
    for source in sources.values():
        groups.setdefault((source.device, source.dtype), []).append(source)
    waits: dict[Any, Any] = {}  # CUDA device -> the stream its copies were queued on
    producers = {
        p.stream.cuda_stream: p.stream for p in deferred if p.stream is not None
    }  # Stream objects are new per current_stream() call: dedupe by handle
    hosts: dict[int, Any] = {}
    pending: list[tuple[Any, list[Any], list[Any]]] = []
    for (device, dtype), members in groups.items():
        if device.type == "cuda" and device not in waits:
            _wait_for_sync_debug_off(torch)
            stream = torch.cuda.current_stream(device)
            for producer in producers.values():
                if producer.device == device and producer != stream:
                    stream.wait_stream(producer)  # GPU-side wait: orders the copies
            waits[device] = stream
        # One gather per device and dtype: 0-d sources (the common case) are stacked,
        # others flattened and concatenated behind them.
        scalars = [m for m in members if m.dim() == 0]
        others = [m for m in members if m.dim() != 0]
        parts = [torch.stack(scalars)] if scalars else []
        parts += [m.reshape(-1) for m in others]
        flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        if device.type == "cpu":
            host = flat
        elif device.type == "cuda":
            with torch.cuda.device(device):
                host = torch.empty(flat.shape, dtype=dtype, pin_memory=True)
                host.copy_(flat, non_blocking=True)
            stats.device_copies += 1
        else:  # other accelerators: one blocking copy per device and dtype
            host = flat.cpu()
            stats.device_copies += 1
            stats.device_syncs += 1
        pending.append((host, scalars, others))
    for stream in waits.values():
        stream.synchronize()  # the batch's one wait on this device; releases the GIL
        stats.device_syncs += 1
    _check_versions(refs)
    # One .tolist() per gather; each source is then a slice of that Python list.
    for host, scalars, others in pending:
        values = host.tolist()
        for offset, member in enumerate(scalars):
            hosts[id(member)] = (values, offset, ())
        offset = len(scalars)
        for member in others:
            hosts[id(member)] = (values, offset, tuple(member.shape))
            offset += member.numel()
    return hosts


def _host_list(entry: tuple[list[Any], int, tuple[int, ...]]) -> Any:
    """A source's value from its gather: a number (0-d) or nested lists."""
    values, offset, shape = entry
    if not shape:
        return values[offset]
    count = 1
    for n in shape:
        count *= n
    return _nest(values[offset : offset + count], shape)


def _nest(flat: list[Any], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _read_one_by_one(deferred: Sequence[Deferred], stats: ResolveStats) -> dict[int, Any]:
    """The slow fallback of :func:`_read_devices`: each source alone; failures skipped."""
    hosts: dict[int, Any] = {}
    for placeholder in deferred:
        source = placeholder.source
        if placeholder.kind not in _DEVICE_KINDS or id(source) in hosts:
            continue
        try:
            hosts[id(source)] = (source.reshape(-1).tolist(), 0, tuple(source.shape))
        except Exception as exc:  # its placeholders record the error
            hosts[id(source)] = exc
            continue
        if source.device.type != "cpu":
            stats.device_copies += 1
            stats.device_syncs += 1
    _check_versions([p for p in deferred if p.kind == "ref" and type(hosts[id(p.source)]) is tuple])
    return hosts


def _check_versions(refs: Sequence[Deferred]) -> None:
    for placeholder in refs:
        # A reference is only ever taken of a tensor at version 0 (never changed).
        if placeholder.source._version != 0:
            placeholder.changed = True


def _report_changed(placeholder: Deferred, stats: ResolveStats) -> None:
    stats.changed += 1
    name = str(placeholder.key)
    if name in stats.changed_reported:
        return
    stats.changed_reported.add(name)
    logger.warning(
        "steplog: the tensor logged as %r was changed in place after log() and before "
        "steplog read it; it is recorded as {'$changed': <value when read>}. Log a copy "
        "(t.clone()) or a fresh tensor (reported once per key)",
        name,
    )


def _wait_for_sync_debug_off(torch: Any) -> None:
    """Do not synchronise while the user has made synchronisation an error or warning."""
    while torch.cuda.get_sync_debug_mode() != 0:
        time.sleep(_SYNC_DEBUG_POLL_SECONDS)


def _read_jax(deferred: Sequence[Deferred]) -> dict[int, Any]:
    if not deferred:
        return {}
    jax = sys.modules["jax"]
    arrays = [d.source for d in deferred]
    values = jax.device_get(arrays)  # one transfer call for the whole batch
    return {id(d): v for d, v in zip(deferred, values, strict=True)}


def _convert(
    placeholder: Deferred,
    hosts: dict[int, Any],
    jax_values: dict[int, Any],
    max_size: int,
    stats: ResolveStats,
) -> Any:
    kind = placeholder.kind
    entry = hosts.get(id(placeholder.source)) if kind in _DEVICE_KINDS else None
    if isinstance(entry, Exception):
        raise entry
    if kind == "ref" or kind == "tensor":
        return _host_list(entry)  # type: ignore[arg-type]
    if kind == "scalar":
        values, offset, _ = entry  # type: ignore[misc]
        return values[offset + placeholder.index]
    if kind == "summary":
        mean, low, high = _host_list(entry)  # type: ignore[arg-type]
        meta = placeholder.meta or {}
        numel = 1
        for n in meta.get("shape", []):
            numel *= n
        _report_large(placeholder, numel, max_size, stats)
        return {"$summary": {**meta, "numel": numel, "mean": mean, "min": low, "max": high}}
    if kind == "numpy":
        if placeholder.source is None:
            meta = placeholder.meta or {}
            _report_large(placeholder, meta.get("numel", 0), max_size, stats)
            return {"$summary": meta}
        return _numpy_to_python(placeholder.source)
    # jax: a numpy array (or scalar) on the host now
    array = jax_values[id(placeholder)]
    numpy = sys.modules["numpy"]
    array = numpy.asarray(array)
    if array.size > max_size:
        _report_large(placeholder, int(array.size), max_size, stats)
        return {"$summary": _numpy_summary(numpy, array)}
    return _numpy_to_python(array)


def _numpy_to_python(array: Any) -> Any:
    if array.dtype.kind not in "biufcUSb?":  # e.g. bfloat16 from ml_dtypes
        array = array.astype("float32")
    return array.tolist()


def _report_large(placeholder: Deferred, numel: int, max_size: int, stats: ResolveStats) -> None:
    name = str(placeholder.key)
    if name in stats.large_reported:
        return
    stats.large_reported.add(name)
    logger.warning(
        "steplog: %r has %d elements, more than max_array_size=%d; recording its shape, "
        "dtype, mean, min and max instead of the values (reported once per key)",
        name,
        numel,
        max_size,
    )


def pop_deferred(rows: Iterable[tuple[int, float, dict[str, Any]]]) -> list[Deferred]:
    """Pop and return the placeholders of every event in ``rows``."""
    found: list[Deferred] = []
    for _, _, data in rows:
        placeholders = data.pop(DEFER_KEY, None)
        if placeholders is not None:
            found.extend(_placeholders(placeholders, data))
    return found


def _placeholders(listed: list[Any], data: dict[str, Any]) -> list[Deferred]:
    """Placeholders for what :func:`snapshot` listed in ``data`` (references come as
    bare tuples; a container of None is ``data`` itself)."""
    out: list[Deferred] = []
    torch = sys.modules.get("torch")
    for item in listed:
        if type(item) is tuple:
            container, key, tensor = item
            item = Deferred(container, key, "ref", tensor)  # version 0 at the call
            if not tensor.is_cpu:
                item.stream = _current_stream(torch, tensor.device)
        if item.container is None:
            item.container = data
        out.append(item)
    return out


def convert_now(value: Any, stats: ResolveStats, *, max_array_size: int) -> Any:
    """Snapshot and convert one value at once (config and summary; blocking)."""
    if type(value) in _plain or not libraries_loaded():
        return value
    holder = snapshot({"value": value}, max_array_size=max_array_size)
    placeholders = holder.pop(DEFER_KEY, None)
    if placeholders:
        resolve(_placeholders(placeholders, holder), stats, max_array_size=max_array_size)
    return holder["value"]
