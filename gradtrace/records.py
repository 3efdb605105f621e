"""The plain data a trace is made of: frozen dataclasses of numbers and strings.

Nothing here knows about torch, networkx or Graphviz. Capture produces these
records, everything downstream (graph, render, JSON) only reads them, so a
saved trace can be loaded and drawn on a machine without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["NODE_KINDS", "OptimizerStep", "TensorStats", "TraceEdge", "TraceNode"]

#: The kinds a node can have: an autograd node, a named parameter, another
#: tensor that requires grad, a tensor handed to the model that does not.
NODE_KINDS = ("op", "param", "leaf", "input")

#: Tensors with at most this many elements keep their exact values.
EXACT_VALUES_MAX = 16


def _float_to_json(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: spell them as strings so the file stays valid JSON."""
    if x is None or math.isfinite(x):
        return x
    if math.isnan(x):
        return "nan"
    return "inf" if x > 0 else "-inf"


def _float_from_json(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        if x not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad number in trace JSON: {x!r} (expected a number, 'nan', 'inf' or '-inf')")
        return float(x)
    return float(x)


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of one tensor (a forward value or a gradient).

    ``min``, ``max``, ``mean``, ``std`` and ``norm`` are over the finite
    elements: ``nan`` and ``inf`` count the others, so a tensor with one NaN
    among a million reads "NaN: 1" beside the statistics of the rest rather
    than "NaN ± NaN" (``mean`` divides by ``numel − nan − inf``). They are
    ``None`` for empty tensors and when no element is finite. Complex tensors
    are described by their magnitudes. ``values`` holds every
    element exactly (flattened, row-major) when the tensor has at most
    ``EXACT_VALUES_MAX`` elements, else ``None``.

    >>> s = TensorStats(shape=(2,), dtype="float32", device="cpu", numel=2,
    ...                 min=1.0, max=3.0, mean=2.0, std=1.4142135, norm=3.1622777,
    ...                 nan=0, inf=0, values=(1.0, 3.0))
    >>> s.finite
    True
    """

    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    norm: float | None
    nan: int
    inf: int
    values: tuple[float, ...] | None = None

    @property
    def finite(self) -> bool:
        """True when the tensor holds no NaN and no infinity."""
        return self.nan == 0 and self.inf == 0

    @property
    def rms(self) -> float | None:
        """Root mean square, ``norm / sqrt(numel)``: a magnitude comparable across sizes."""
        if self.norm is None or self.numel == 0:
            return None
        return self.norm / math.sqrt(self.numel)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "device": self.device,
            "numel": self.numel,
            "min": _float_to_json(self.min),
            "max": _float_to_json(self.max),
            "mean": _float_to_json(self.mean),
            "std": _float_to_json(self.std),
            "norm": _float_to_json(self.norm),
            "nan": self.nan,
            "inf": self.inf,
            "values": None if self.values is None else [_float_to_json(v) for v in self.values],
        }

    @classmethod
    def _of(cls, *fields: Any) -> TensorStats:
        """``TensorStats(*fields)`` at half the cost, for capture's loop over every tensor of a step
        (a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``)."""
        obj = object.__new__(cls)
        obj.__dict__.update(zip(_STATS_FIELDS, fields))
        return obj

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorStats:
        values = d.get("values")
        return cls(
            shape=tuple(int(n) for n in d["shape"]),
            dtype=str(d["dtype"]),
            device=str(d["device"]),
            numel=int(d["numel"]),
            min=_float_from_json(d["min"]),
            max=_float_from_json(d["max"]),
            mean=_float_from_json(d["mean"]),
            std=_float_from_json(d["std"]),
            norm=_float_from_json(d["norm"]),
            nan=int(d["nan"]),
            inf=int(d["inf"]),
            values=None if values is None else tuple(_float_from_json(v) for v in values),  # type: ignore[misc]
        )


_STATS_FIELDS = tuple(TensorStats.__dataclass_fields__)


def _stats_tuple_to_json(items: tuple[TensorStats | None, ...]) -> list[dict[str, Any] | None]:
    return [None if s is None else s.to_dict() for s in items]


def _stats_tuple_from_json(items: Iterable[Any]) -> tuple[TensorStats | None, ...]:
    return tuple(None if s is None else TensorStats.from_dict(s) for s in items)


@dataclass(frozen=True)
class TraceNode:
    """One node of the traced graph.

    ``values`` and ``grads`` hold one entry per output of the node (most ops
    have one; ``split`` or an LSTM have several), ``None`` where an output was
    not recorded or received no gradient. ``value`` and ``grad`` are the first
    output's, which is what a single-output op has.

    For a parameter node, ``update`` describes the optimizer's change to it
    (``w_after - w_before``) when a ``step()`` was captured, and
    ``update_ratio`` is ``‖Δw‖ / ‖w‖``.

    ``source`` is where the user's code made the op (``model.py:57 in forward``:
    the first frame outside torch and gradtrace), ``None`` where unknown.
    ``args`` says compactly what else the op read besides the edges drawn into
    it: constants and plain-tensor operands, indices (``× 2.0``, ``dim=1, index=0``).
    ``scope`` is ``module`` with each repeated call of a module numbered
    (``pool#2`` for the second call of ``pool``): the clusters a drawing shows.
    ``sgd_update`` is −lr·grad for a parameter of a plain SGD step, beside the
    applied ``update``, so "Δw = −lr × grad" can be checked by hand.
    """

    key: str
    kind: str
    label: str
    module: str = ""
    grad_fn: str | None = None
    values: tuple[TensorStats | None, ...] = ()
    grads: tuple[TensorStats | None, ...] = ()
    forward_step: int | None = None
    backward_step: int | None = None
    update: TensorStats | None = None
    update_ratio: float | None = None
    source: str | None = None
    args: str = ""
    scope: str = ""
    sgd_update: TensorStats | None = None

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {self.kind!r} (must be one of {list(NODE_KINDS)})")

    @property
    def value(self) -> TensorStats | None:
        return self.values[0] if self.values else None

    @property
    def grad(self) -> TensorStats | None:
        return self.grads[0] if self.grads else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "label": self.label,
            "module": self.module,
            "grad_fn": self.grad_fn,
            "values": _stats_tuple_to_json(self.values),
            "grads": _stats_tuple_to_json(self.grads),
            "forward_step": self.forward_step,
            "backward_step": self.backward_step,
            "update": None if self.update is None else self.update.to_dict(),
            "update_ratio": _float_to_json(self.update_ratio),
            "source": self.source,
            "args": self.args,
            "scope": self.scope,
            "sgd_update": None if self.sgd_update is None else self.sgd_update.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceNode:
        update = d.get("update")
        return cls(
            key=str(d["key"]),
            kind=str(d["kind"]),
            label=str(d["label"]),
            module=str(d.get("module", "")),
            grad_fn=d.get("grad_fn"),
            values=_stats_tuple_from_json(d.get("values", ())),
            grads=_stats_tuple_from_json(d.get("grads", ())),
            forward_step=d.get("forward_step"),
            backward_step=d.get("backward_step"),
            update=None if update is None else TensorStats.from_dict(update),
            update_ratio=_float_from_json(d.get("update_ratio")),
            source=None if d.get("source") is None else str(d["source"]),
            args=str(d.get("args", "")),
            scope=str(d.get("scope", d.get("module", ""))),
            sgd_update=None if d.get("sgd_update") is None else TensorStats.from_dict(d["sgd_update"]),
        )


@dataclass(frozen=True)
class TraceEdge:
    """Data flowing from ``src`` to ``dst``: output ``output`` of ``src`` is an input of ``dst``.

    ``grad`` is the gradient ``dst``'s backward sent back along this edge (``None``
    where none was recorded). ``uses`` counts the inputs of ``dst`` this one
    output fed (2 for ``x * x``); ``grad`` is then the sum over those inputs.
    """

    src: str
    dst: str
    output: int = 0
    grad: TensorStats | None = None
    uses: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "output": self.output,
                "grad": None if self.grad is None else self.grad.to_dict(), "uses": self.uses}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceEdge:
        grad = d.get("grad")
        return cls(src=str(d["src"]), dst=str(d["dst"]), output=int(d.get("output", 0)),
                   grad=None if grad is None else TensorStats.from_dict(grad), uses=int(d.get("uses", 1)))


@dataclass(frozen=True)
class OptimizerStep:
    """The optimizer ``step()`` captured after the traced backward."""

    name: str
    lr: float | None
    hyperparameters: tuple[tuple[str, str], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lr": _float_to_json(self.lr), "hyperparameters": [list(p) for p in self.hyperparameters]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OptimizerStep:
        return cls(
            name=str(d["name"]),
            lr=_float_from_json(d.get("lr")),
            hyperparameters=tuple((str(k), str(v)) for k, v in d.get("hyperparameters", ())),
        )
