"""Tensor statistics, computed where the tensor lives; no tensor outlives the capture.

Capture calls :meth:`StatsBuffer.add` for every forward value and gradient it
records: hundreds to thousands of tensors per step, most of them small, some
of them the same elements seen again (a view, a transpose, a gradient passed
on unchanged). What costs is the fixed price per tensor, and for large ones
the passes over their elements, so:

- **Small tensors are held, not copied, and reduced in groups.**
  :meth:`~StatsBuffer.add` only keeps a reference (and the tensor's version
  counter). :meth:`~StatsBuffer.settle` reduces what is held, one group per
  shape, dtype and device: one ``stack`` and a handful of reductions along
  ``dim=1`` for hundreds of tensors. Held tensors are bounded
  (``STAGE_ELEMENTS``); the recorder settles before any op that writes in
  place (so a held value is never read after it changed) and at the end of
  the backward. A tensor whose version counter moved anyway (a user hook
  writing in place) is counted in :attr:`StatsBuffer.changed_after_add`.
- **Large tensors** are reduced at once, in contiguous passes: a transposed
  weight is read as the block of memory it is, not element by element
  through its strides, and on the CPU a slice with gaps is copied first (a
  third of the cost of strided passes). On the CPU: ``aminmax``, ``sum`` and
  a BLAS dot product (``torch.var_mean`` is ten times slower than those three
  together there); on an accelerator: ``aminmax`` and a one-pass ``var_mean``.
- **The same elements are reduced once.** A tensor that reads the same
  memory as one added before (same start, same set of offsets: a view, a
  transpose, a reshape of it), at the same version, while that one is still
  alive, takes its statistics: min, max, sums and counts do not depend on
  the order of the elements.
- **On an accelerator the price is the launches, not the arithmetic** (a few
  microseconds of host time each): held tensors of every shape are packed
  into rows and reduced together, a dozen launches for millions of elements,
  and results stay on the device until :meth:`StatsBuffer.materialize`
  copies them to the host once per device (:mod:`gradtrace.recorder.packed`).
  On the CPU, where reading back is free, NaN and infinity counts are
  computed only when a sum came out non-finite.
- The standard deviation is the population one; on the CPU it is recomputed
  from centred values in the rare case where Σx²/n − mean² would cancel
  (tensors of near-equal values); on an accelerator it is always centred.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Any, Iterator

import torch

from ..errors import CaptureError
from ..records import EXACT_VALUES_MAX, TensorStats
from .finish import Meta, empty_stats, finished, from_sums, needs_centring, needs_scaling, python_stats
from .packed import ROW_WIDTHS, PackedRows, padded_size

__all__ = ["STAGE_ELEMENTS", "StatsBuffer", "invisible", "stats_of"]

#: Tensors up to this many elements are held and reduced in groups (per device type); larger ones at once.
STAGE_MAX = {"cpu": 1 << 16}
STAGE_MAX_DEFAULT = 1 << 22
#: Held tensors are reduced once they hold this many elements in all (on the CPU).
STAGE_ELEMENTS = 1 << 23
#: The same bound on an accelerator (padded elements), where each reduction costs launches: a packed
#: buffer of at most this many elements (64 MB in float32) plus the held tensors it copies.
ACCELERATOR_STAGE_ELEMENTS = 1 << 24
#: Small tensors (biases, norms' statistics, scalars) wait for more of their kind: each reduction of a
#: packed buffer costs a dozen launches whatever its size, so they are reduced when this many elements
#: of them are held (or at any settle the recorder asks for), not at every large buffer's.
ACCELERATOR_SMALL_ELEMENTS = 1 << 20
SMALL_PACKED = ROW_WIDTHS[-2]  # a tensor of at most this many elements is small
#: Groups of more held tensors than this are finished with tensor arithmetic, smaller ones in Python.
VECTOR_ROWS = 32
#: Tensors larger than this are looked up among the blocks reduced before (smaller ones cost less to
#: reduce). Never below EXACT_VALUES_MAX: exact values are listed in the order the tensor reads them.
SAME_CHECK_MIN = max(1 << 9, EXACT_VALUES_MAX)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_FLOATS = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})  # held as they are
_WIDE = frozenset({torch.float32, torch.float64})  # reduced without a conversion
_DTYPE_NAMES = {d: _dtype_name(d) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64)}
_DEVICE_NAMES: dict[torch.device, str] = {}
_META = ("gradtrace needs real values: a tensor on the 'meta' device has a shape but no data; "
         "run the step on a real device (e.g. model.to_empty(device='cpu') and initialise the parameters)")
#: Per dtype a reduction runs in: magnitudes past which its Σx² leaves its range (then the careful path).
_RANGE = {torch.float32: (1e18, 1e-18), torch.float64: (1e150, 1e-150)}


def _device_name(device: torch.device) -> str:
    name = _DEVICE_NAMES.get(device)
    if name is None:
        name = _DEVICE_NAMES[device] = str(device)
    return name


def _layout(x: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """The set of memory offsets ``x`` reads, from ``x.data_ptr()`` on, as ``(stride, size)`` runs.

    Dimensions are sorted by stride and merged where one continues the other, so
    every view that reads the same elements (a transpose, a permutation, a
    reshape, however they are ordered) has the same layout; a dense block of
    ``n`` elements is ``((1, n),)``. Repeats (stride 0) stay in the layout, so
    equal layouts read equal multisets of elements.
    """
    runs: list[list[int]] = []
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz != 1):
        if runs and stride == runs[-1][0] * runs[-1][1]:
            runs[-1][1] *= size
        else:
            runs.append([stride, size])
    return tuple((st, sz) for st, sz in runs)


_STRIDED = torch.strided
_COMPRESSED = frozenset({torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc})


def _is_wrapped(t: torch.Tensor) -> bool:
    """A tensor wrapped by a torch.func transform (vmap, grad) or a nested tensor: its elements are not
    plain memory this code can reduce."""
    return t.is_nested or (torch._C._are_functorch_transforms_active() and torch._C._functorch.is_functorch_wrapped_tensor(t))


@contextlib.contextmanager
def invisible() -> Iterator[None]:
    """gradtrace's own tensor work, hidden from every dispatch mode and __torch_function__ handler
    (a user's FlopCounterMode, a profiler's, a mode of their own): they see the user's ops only."""
    n = torch._C._len_torch_dispatch_stack()
    modes = [torch._C._pop_torch_dispatch_stack(None) for _ in range(n)]
    try:
        with torch._C.DisableTorchFunction():
            yield
    finally:
        for mode in reversed(modes):
            torch._C._push_on_torch_dispatch_stack(mode)


def _freed(t: torch.Tensor) -> bool:
    """Whether the memory under ``t`` was released after it was made: FSDP2 frees an unsharded
    parameter with ``untyped_storage().resize_(0)`` between its uses, and reading it then crashes the
    process (no Python error: a segmentation fault)."""
    if t.is_meta or t.numel() == 0:
        return False
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # no plain storage (a wrapper subclass): not ours to read this way
        return False
    end = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    return storage.nbytes() < end * t.element_size()


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter
        return -1


# A held tensor: (handle, tensor, its version when added, dtype name when it is a converted copy).
_Held = tuple[int, torch.Tensor, int, "str | None"]


class StatsBuffer:
    """Collects tensor statistics during capture; turns them into TensorStats at the end.

    Tensors handed to :meth:`add` may be read as late as the next
    :meth:`settle` (or :meth:`materialize`): the caller settles before it lets
    anything change them in place.

    >>> buf = StatsBuffer()
    >>> h = buf.add(torch.tensor([1.0, 2.0, 3.0]))
    >>> buf.materialize()[h].values
    (1.0, 2.0, 3.0)
    """

    def __init__(self, *, accelerator_path: bool = False) -> None:
        # accelerator_path: treat CPU tensors as an accelerator would (no read-back until the end);
        # lets the accelerator code be tested on machines without one.
        self._accelerator_path = accelerator_path
        self._done: list[TensorStats | None] = []
        self._held: list[_Held] = []
        self._held_elements = 0
        self._packed_elements = 0  # the same, as rows of a packed buffer (accelerators)
        self._small_elements = 0  # the small ones' part of that
        self._held_storages: set[int] = set()  # storage addresses of self._held[:self._storages_known]
        self._storages_known = 0
        # Memory already described: (data_ptr, _layout, dtype, version) -> (handle, weakref to the tensor that had it).
        self._blocks: dict[tuple[Any, ...], tuple[int, weakref.ref[torch.Tensor]]] = {}
        self._block_storages: dict[int, list[tuple[Any, ...]]] = {}  # storage address -> its keys in _blocks
        self._same_as: list[tuple[int, int, tuple[int, ...]]] = []  # (handle, handle with the same elements, shape)
        # Accelerator results waiting for the one copy to the host.
        self._packed = PackedRows()
        #: Tensors whose version counter moved between add() and their reduction (written in place meanwhile).
        self.changed_after_add = 0
        #: Sparse tensors added (described by their stored values), and tensors whose elements could not be read.
        self.sparse = 0
        self.unreadable = 0
        self._final = False
        self.freed = 0  # tensors whose memory was released before they could be read (FSDP2's unsharded parameters)

    def __len__(self) -> int:
        return len(self._done)

    @property
    def held_elements(self) -> int:
        """Elements of the tensors held, waiting for :meth:`settle`."""
        return self._held_elements

    def holds_any(self, tensors: list[Any]) -> bool:
        """Whether writing into ``tensors`` could change a held tensor (they share memory), so the
        caller must :meth:`settle` first. True when in doubt (a tensor without a plain storage)."""
        if not tensors or not self._held:
            return False
        try:
            held, storages = self._held, self._held_storages
            for i in range(self._storages_known, len(held)):  # (extended since the last call only)
                storages.add(held[i][1].untyped_storage().data_ptr())
            self._storages_known = len(held)
            return any(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in storages for t in tensors)
        except (RuntimeError, NotImplementedError, TypeError):
            return True

    def before_write(self, tensors: list[Any]) -> None:
        """An op is about to write into ``tensors``: read every held tensor that shares their memory,
        and forget what is known of that memory. (The version counter cannot be trusted for this: a
        write through ``.data`` shares the memory but not the counter.)"""
        if self._held and self.holds_any(tensors):
            self.settle()
        if self._block_storages:
            for t in tensors:
                try:
                    keys = self._block_storages.pop(t.untyped_storage().data_ptr(), ())
                except (AttributeError, RuntimeError, NotImplementedError):
                    self._blocks.clear()
                    self._block_storages.clear()
                    return
                for key in keys:
                    self._blocks.pop(key, None)

    @property
    def watching(self) -> bool:
        """Whether a write may concern what this buffer holds or remembers (see :meth:`before_write`)."""
        return bool(self._held_elements or self._block_storages)

    def add(self, tensor: torch.Tensor) -> int:
        """Start the statistics of ``tensor``; return a handle for :meth:`materialize`."""
        # Hot path: it runs for every value and gradient of the step; a small float tensor is only held.
        handle = len(self._done)
        self._done.append(None)
        if tensor.layout is not _STRIDED or _is_wrapped(tensor):
            with invisible():
                self._add_unusual(handle, tensor)
            return handle
        n = tensor.numel()
        if tensor.dtype in _FLOATS and n:
            if n > SAME_CHECK_MIN and self._seen_before(handle, tensor, n):
                return handle
            if n <= self._hold_max(tensor):
                self._hold(handle, tensor, n, None)
                return handle
        with invisible():
            self._add_other(handle, tensor, n)
        return handle

    def add_now(self, tensor: torch.Tensor) -> int:
        """Like :meth:`add`, but reduced at once: no reference to ``tensor`` is kept. For a gradient
        about to reach a leaf, which AccumulateGrad takes over as ``.grad`` only if nobody else holds it."""
        handle = len(self._done)
        self._done.append(None)
        with invisible():
            if tensor.layout is not _STRIDED or _is_wrapped(tensor):
                self._add_unusual(handle, tensor)
            else:
                n = tensor.numel()
                if tensor.dtype in _FLOATS and n and n <= self._hold_max(tensor):
                    self._hold(handle, tensor.detach().clone(), n, None)  # a private copy, reduced with the rest
                elif not (tensor.dtype in _FLOATS and n > SAME_CHECK_MIN and self._seen_before(handle, tensor, n)):
                    self._add_other(handle, tensor, n)
        return handle

    def _hold_max(self, tensor: torch.Tensor) -> int:
        """The most elements a tensor may have to be held (larger ones are reduced at once)."""
        return STAGE_MAX["cpu"] if tensor.is_cpu and not self._accelerator_path else STAGE_MAX_DEFAULT

    def _hold(self, handle: int, tensor: torch.Tensor, n: int, label: str | None) -> None:
        self._held.append((handle, tensor, _version(tensor), label))
        self._held_elements += n
        if tensor.is_cpu and not self._accelerator_path:
            if self._held_elements >= STAGE_ELEMENTS:
                self.settle()
        elif n <= SMALL_PACKED:
            self._small_elements += padded_size(n)
            if self._small_elements >= ACCELERATOR_SMALL_ELEMENTS:
                self.settle()
        else:
            self._packed_elements += padded_size(n)  # what it takes in the packed buffer
            if self._packed_elements >= ACCELERATOR_STAGE_ELEMENTS:
                self._settle_large()

    def _settle_large(self) -> None:
        """Reduce the held tensors but the small ones of an accelerator (those wait for more of their kind)."""
        small = [e for e in self._held if e[1].numel() <= SMALL_PACKED and not (e[1].is_cpu and not self._accelerator_path)]
        small_elements = self._small_elements
        if small:
            keep = {id(e) for e in small}
            self._held = [e for e in self._held if id(e) not in keep]
        self.settle()
        self._held = small
        self._held_elements = sum(e[1].numel() for e in small)
        self._small_elements = small_elements

    def _seen_before(self, handle: int, tensor: torch.Tensor, n: int) -> bool:
        """Whether ``tensor`` reads the same elements as one added before (then its statistics are those)."""
        key = (tensor.data_ptr(), ((1, n),) if tensor.is_contiguous() else _layout(tensor), tensor.dtype, _version(tensor))
        seen = self._blocks.get(key)
        if seen is not None and seen[1]() is not None:
            # The same memory at the same version, and the tensor that had it is alive, so the
            # memory was not handed to another tensor meanwhile. Min, max, sums and counts do not
            # depend on the order the elements are read in.
            self._same_as.append((handle, seen[0], tuple(tensor.shape)))
            return True
        self._blocks[key] = (handle, weakref.ref(tensor))
        try:
            self._block_storages.setdefault(tensor.untyped_storage().data_ptr(), []).append(key)
        except (RuntimeError, NotImplementedError):
            del self._blocks[key]  # no plain storage to watch for writes: never reuse it
        return False

    def _add_unusual(self, handle: int, tensor: torch.Tensor) -> None:
        """A sparse tensor (described by its stored values, counted in :attr:`sparse`), or one whose
        elements cannot be read here: nested, or wrapped by a ``torch.func`` transform (an empty
        statistic, counted in :attr:`unreadable`)."""
        x = tensor.detach()
        layout = x.layout
        if layout is torch.sparse_coo or layout in _COMPRESSED:
            try:
                values = x.coalesce().values() if layout is torch.sparse_coo else x.values()
            except (RuntimeError, NotImplementedError):
                values = None
            if values is not None:
                self.sparse += 1
                dtype_name = _DTYPE_NAMES.get(x.dtype) or _dtype_name(x.dtype)
                meta = Meta(tuple(x.shape), dtype_name, _device_name(x.device), values.numel(), False)
                inner = StatsBuffer(accelerator_path=self._accelerator_path)
                inner.add(values.reshape(-1))
                s = inner.materialize()[0]
                self._done[handle] = TensorStats._of(meta.shape, meta.dtype, meta.device, meta.numel, s.min, s.max,
                                                     s.mean, s.std, s.norm, s.nan, s.inf, None)
                return
        self.unreadable += 1
        try:
            shape = tuple(x.shape)
        except (RuntimeError, NotImplementedError):  # a nested tensor has no single shape
            shape = ()
        self._done[handle] = empty_stats(Meta(shape, _dtype_name(x.dtype), _device_name(x.device), 0, False))

    def _unreadable_freed(self, handle: int, t: torch.Tensor, label: str | None) -> None:
        self.freed += 1
        name = label.lstrip("!") if label is not None else (_DTYPE_NAMES.get(t.dtype) or _dtype_name(t.dtype))
        self._done[handle] = empty_stats(Meta(tuple(t.shape), name, _device_name(t.device), 0, False))

    def _add_other(self, handle: int, tensor: torch.Tensor, n: int) -> None:
        if tensor.is_meta:
            raise CaptureError(_META)
        if _freed(tensor):
            self._unreadable_freed(handle, tensor, None)
            return
        x = tensor.detach()
        dtype_name = _DTYPE_NAMES.get(x.dtype) or _dtype_name(x.dtype)
        keep_values = not x.is_complex()
        meta = Meta(tuple(x.shape), dtype_name, _device_name(x.device), n, keep_values)
        if n == 0:
            self._done[handle] = empty_stats(meta)
            return
        if x.dtype not in _FLOATS:
            # A private converted copy: complex numbers have no order (describe their magnitudes),
            # integers and booleans are counted in double precision.
            x = x.abs() if not keep_values else x
            x = x.double() if not x.is_floating_point() else x
            if n <= self._hold_max(x):
                self._hold(handle, x, n, dtype_name if keep_values else "!" + dtype_name)
                return
        elif x.is_contiguous():
            x = x.view(-1)
        else:
            layout = _layout(x)
            if layout == ((1, n),):
                # A dense block read in another order (a transposed weight): one contiguous pass over it.
                x = x.as_strided((n,), (1,), x.storage_offset())
            elif x.is_cpu and not self._accelerator_path and all(st for st, _ in layout):
                # Gaps between the elements (a slice): on the CPU a copy and contiguous passes cost a
                # third of passes through the strides. (Not with repeats: an expand may be huge.)
                x = x.contiguous().view(-1)
        if x.dtype not in _WIDE:
            x = x.float()
        if x.is_cpu and not self._accelerator_path:
            self._done[handle] = self._cpu_large(meta, x)
        else:
            self._packed.reduce_one(handle, meta, x)

    # -- reductions ------------------------------------------------------------------

    def settle(self) -> None:
        """Reduce every held tensor now; call it before any of them may be changed in place.

        A tensor whose memory is released at the moment stays held for a later call, until the
        last one, by :meth:`materialize` (see :func:`_freed`)."""
        if not self._held:
            return
        with invisible():
            self._settle()

    def _settle(self) -> None:
        freed: list[_Held] = []
        try:
            self._settle_held(self._final, freed)
        finally:
            self._held.extend(freed)  # (not counted in _held_elements: they hold no memory now)

    def _settle_held(self, final: bool, freed: list[_Held]) -> None:
        held, self._held, self._held_elements, self._packed_elements = self._held, [], 0, 0
        self._small_elements = 0
        self._held_storages, self._storages_known = set(), 0
        groups: dict[tuple[Any, ...], list[_Held]] = {}
        packs: dict[tuple[torch.device, torch.dtype], list[tuple[int, Meta, torch.Tensor]]] = {}
        for entry in held:
            handle, t, version, label = entry
            if _freed(t):
                if final:
                    self._unreadable_freed(handle, t, label)
                else:  # (freed between uses: FSDP2 gathers a parameter again for the backward; read it then)
                    freed.append(entry)
                continue
            if t.is_cpu and not self._accelerator_path:
                groups.setdefault((t.shape, t.dtype, t.device, label), []).append(entry)
                continue
            # An accelerator: every shape of one device and dtype together, a few launches in all.
            if t.is_meta:
                raise CaptureError(_META)
            if version != -1 and t._version != version:
                self.changed_after_add += 1
            keep_values = label is None or not label.startswith("!")
            name = label.lstrip("!") if label is not None else (_DTYPE_NAMES.get(t.dtype) or _dtype_name(t.dtype))
            meta = Meta(tuple(t.shape), name, _device_name(t.device), t.numel(), keep_values)
            packs.setdefault((t.device, t.dtype), []).append((handle, meta, t))
        with torch.no_grad():
            for (shape, dtype, device, label), group in groups.items():
                if device.type == "meta":
                    raise CaptureError(_META)
                self._reduce_group(shape, dtype, device, label, group)
        for entries in packs.values():
            self._packed.reduce(entries)

    def discard_held(self) -> None:
        """Let go of every held tensor unread (their statistics will be missing)."""
        self._held, self._held_elements, self._packed_elements, self._small_elements = [], 0, 0, 0
        self._held_storages, self._storages_known = set(), 0

    def _reduce_group(self, shape: torch.Size, dtype: torch.dtype, device: torch.device, label: str | None,
                      group: list[_Held]) -> None:
        keep_values = label is None or not label.startswith("!")
        name = label.lstrip("!") if label is not None else (_DTYPE_NAMES.get(dtype) or _dtype_name(dtype))
        n = math.prod(shape)
        meta = Meta(tuple(shape), name, _device_name(device), n, keep_values)
        for _, t, version, _ in group:
            if version != -1 and t._version != version:
                self.changed_after_add += 1
        m = torch.stack([t for _, t, _, _ in group]).reshape(len(group), n)
        if dtype not in _WIDE:
            m = m.float()
        handles = [h for h, _, _, _ in group]
        # (Only the CPU path comes here: held tensors of an accelerator are packed, see settle.)
        if device.type == "cpu" and not self._accelerator_path:
            if n <= EXACT_VALUES_MAX:
                for h, values in zip(handles, m.tolist()):
                    self._done[h] = python_stats(meta, values)
                return
            # amin and amax: along a dimension they are three times faster than aminmax on the CPU.
            sums = torch.stack((m.amin(dim=1), m.amax(dim=1), m.sum(dim=1), torch.linalg.vector_norm(m, dim=1)), dim=1).double()
            if len(handles) <= VECTOR_ROWS:
                # A few rows: finishing them in Python costs less than a dozen more small kernels.
                for i, (h, (a, b, s, nm)) in enumerate(zip(handles, sums.tolist())):
                    self._done[h] = self._finish_cpu_row(meta, m, i, a, b, s, nm * nm)
                return
            lo, hi, total, norm = sums.unbind(1)
            squares = norm.square()
            mean = total / n
            var = squares / n - mean * mean
            # Rows the formula does not serve (rare): a NaN or an infinity, or a spread the
            # subtraction above would cancel. They take the careful path, one by one.
            huge, tiny = _RANGE[m.dtype]
            largest = torch.maximum(lo.abs(), hi.abs())
            careful = ~(total.isfinite() & squares.isfinite()) | ((var <= 1e-3 * mean * mean) & (lo != hi))
            careful |= (largest > huge) | ((largest < tiny) & (largest > 0))  # squares out of range
            std = torch.where(lo == hi, 0.0, var.clamp(min=0.0).sqrt())
            rows = torch.stack((lo, hi, mean, std, norm), dim=1).tolist()
            shape_, name_, device_, make = meta.shape, meta.dtype, meta.device, TensorStats._of
            for h, (a, b, mu, sd, nm) in zip(handles, rows):
                self._done[h] = make(shape_, name_, device_, n, a, b, mu, sd, nm, 0, 0, None)
            if careful.any():
                cpu_rows = sums.tolist()
                for i in careful.nonzero().flatten().tolist():
                    a, b, s, nm = cpu_rows[i]
                    self._done[handles[i]] = self._finish_cpu_row(meta, m, i, a, b, s, nm * nm)
            return

    def _finish_cpu_row(self, meta: Meta, m: torch.Tensor, row: int | None, mn: float, mx: float, total: float,
                        squares: float) -> TensorStats:
        """TensorStats of ``m[row]`` (of ``m`` when ``row`` is None) from its min, max, Σx and Σx²."""
        n = meta.numel
        nan = inf = 0
        centred = None
        huge, tiny = _RANGE.get(m.dtype, _RANGE[torch.float64])
        if not (math.isfinite(total) and math.isfinite(squares)):
            x = m if row is None else m[row]
            nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            if nan or inf:
                return _finite_part(meta, x, nan, inf)
            return self._scaled_row(meta, x, mn, mx)  # finite values whose sums overflowed
        elif needs_scaling(max(-mn, mx), huge, tiny):
            return self._scaled_row(meta, m if row is None else m[row], mn, mx)
        elif mn == mx:
            centred = 0.0  # every element equal (a zero bias, the gradient of a mean): no spread
        elif needs_centring(total, squares, n):
            x = m if row is None else m[row]
            centred = (x.double() - total / n).square_().sum().item()
        return from_sums(meta, mn, mx, total, squares, centred, nan, inf, None)

    @staticmethod
    def _scaled_row(meta: Meta, x: torch.Tensor, mn: float, mx: float) -> TensorStats:
        """Statistics of finite values whose squares or sums leave the range of the arithmetic
        (|x| beyond ~1e154 in double precision, ~1e19 in single, or tiny): mean and std from the
        values scaled by a power of two (exact), in double precision; the norm is torch's
        double-precision one (infinite exactly when torch.linalg.vector_norm says so)."""
        x = x.double()
        s = math.ldexp(1.0, math.frexp(max(-mn, mx))[1] - 1)
        y = x / s
        var, mean = torch.var_mean(y, correction=0)
        norm = torch.linalg.vector_norm(x).item()
        if math.isfinite(norm):
            norm = torch.linalg.vector_norm(y).item() * s  # no underflow of tiny squares
        if mn == mx:  # every element equal: no spread, and the mean is that element
            return finished(meta, mn, mx, mn, 0.0, norm)
        return finished(meta, mn, mx, mean.item() * s, math.sqrt(var.item()) * s, norm)

    def _cpu_large(self, meta: Meta, x: torch.Tensor) -> TensorStats:
        lo, hi = torch.aminmax(x)
        if x.dim() == 1 and x.is_contiguous():
            total, squares = x.sum().item(), torch.dot(x, x).item()  # BLAS: the fastest Σx²
        else:
            # Repeats in memory (an expand): reduce it where it lies rather than copy it.
            total, squares = x.sum().item(), torch.linalg.vector_norm(x).item() ** 2
        return self._finish_cpu_row(meta, x, None, lo.item(), hi.item(), total, squares)

    # -- the end -----------------------------------------------------------------------

    def materialize(self) -> list[TensorStats]:
        """Finish every statistic: one copy to the host per device. Returns one TensorStats per handle."""
        with invisible():
            return self._materialize()

    def _materialize(self) -> list[TensorStats]:
        self._final = True  # a tensor whose memory is released now is described as unreadable
        try:
            self.settle()
        finally:
            self._final = False
        self._packed.finish(self._done)
        for h, source, shape in self._same_as:
            s = self._done[source]
            if s is not None:  # (no values to reorder: blocks this large keep none)
                self._done[h] = TensorStats._of(shape, s.dtype, s.device, s.numel, s.min, s.max, s.mean, s.std, s.norm, s.nan, s.inf, None)
        self._same_as.clear()
        self._blocks.clear()
        self._block_storages.clear()
        result = [s for s in self._done if s is not None]
        if len(result) != len(self._done):
            raise RuntimeError("gradtrace internal error: a statistic was never finished")
        return result

def _finite_part(meta: Meta, x: torch.Tensor, nan: int, inf: int) -> TensorStats:
    """Statistics of the finite elements of ``x`` (a CPU tensor holding NaN or infinity), in double precision."""
    finite = x[torch.isfinite(x)].double()
    if finite.numel() == 0:
        return from_sums(meta, 0.0, 0.0, 0.0, 0.0, None, nan, inf, None)
    lo, hi = (v.item() for v in torch.aminmax(finite))
    if needs_scaling(max(-lo, hi)):  # (huge or tiny finite values beside the others: their squares leave the range)
        s = StatsBuffer._scaled_row(meta, finite, lo, hi)
        return finished(meta, lo, hi, s.mean, s.std, s.norm, nan, inf)
    total = finite.sum().item()
    centred = 0.0 if lo == hi else (finite - total / finite.numel()).square_().sum().item()
    return from_sums(meta, lo, hi, total, torch.dot(finite, finite).item(), centred, nan, inf, None)


def stats_of(tensor: torch.Tensor) -> TensorStats:
    """The TensorStats of one tensor, computed the same way capture computes them.

    >>> stats_of(torch.tensor([3.0, 4.0])).norm
    5.0
    """
    buf = StatsBuffer()
    buf.add(tensor)
    return buf.materialize()[0]
