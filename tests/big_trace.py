"""A realistic big trace built from records directly (no torch, no capture): for the replay page at scale.

``big_trace(30_000)`` is a transformer-like step: ``stages.S.blocks.B`` blocks of
attention (q, k, v, o linears, softmax) and an MLP, with residual adds and layer
norms, nested three modules deep, repeated blocks (the page folds them as
``blocks ×K``), a gradient on every edge (the fan-out at each residual sums), one
NaN made in a forward op and carried to its consumers, and a parameter update
on every weight. Built in well under a second.
"""

from __future__ import annotations

import math

from gradtrace.records import OptimizerStep, TensorStats, TraceEdge, TraceNode
from gradtrace.steptrace import Trace

#: Nodes one block makes (see _block): stages x blocks x this + the head is about the asked size.
NODES_PER_BLOCK = 38


def _stats(shape: tuple[int, ...], scale: float, nan: int = 0) -> TensorStats:
    numel = math.prod(shape)
    norm = scale * math.sqrt(numel)
    return TensorStats(shape, "float32", "cpu", numel, -3 * scale, 3 * scale, 0.01 * scale, scale, norm, nan, 0, None)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[TraceNode] = []
        self.edges: list[TraceEdge] = []
        self.modules: dict[str, str] = {}
        self.poisoned: set[str] = set()
        self.nan_at: str | None = None

    def add(self, kind: str, label: str, module: str, inputs: list[str], shape: tuple[int, ...], scale: float,
            grad_fn: str | None = None, nan: bool = False) -> str:
        key = f"n{len(self.nodes)}"
        poisoned = nan or any(i in self.poisoned for i in inputs)
        if poisoned and kind == "op":
            self.poisoned.add(key)
        value = _stats(shape, scale, nan=3 if poisoned and kind == "op" else 0)
        grad = None if kind == "input" else _stats(shape, scale * 1e-3 * (1 + len(self.nodes) % 7))
        update = _stats(shape, scale * 1e-4) if kind == "param" else None
        self.nodes.append(TraceNode(
            key=key, kind=kind, label=label, module=module, grad_fn=grad_fn, values=(value,), grads=(grad,),
            forward_step=len(self.nodes) if kind == "op" else None, update=update,
            update_ratio=(1e-4 if kind == "param" else None), source=f"model.py:{100 + len(self.nodes) % 300} in forward" if kind == "op" else None,
            scope=module))
        for i in inputs:
            src = self.nodes[int(i[1:])]
            g = src.grad
            self.edges.append(TraceEdge(i, key, 0, None if g is None else _stats(g.shape, (g.norm or 0) / max(math.sqrt(g.numel), 1) / 2)))
        return key

    def linear(self, module: str, x: str, d_in: int, d_out: int) -> str:
        self.modules[module] = "Linear"
        w = self.add("param", f"{module}.weight", module, [], (d_out, d_in), 0.05)
        b = self.add("param", f"{module}.bias", module, [], (d_out,), 0.01)
        t = self.add("op", "t", module, [w], (d_in, d_out), 0.05, "TBackward0")
        return self.add("op", "addmm", module, [b, x, t], (64, d_out), 0.5, "AddmmBackward0")

    def norm(self, module: str, x: str, d: int) -> str:
        self.modules[module] = "LayerNorm"
        w = self.add("param", f"{module}.weight", module, [], (d,), 1.0)
        b = self.add("param", f"{module}.bias", module, [], (d,), 0.01)
        return self.add("op", "native_layer_norm", module, [x, w, b], (64, d), 1.0, "NativeLayerNormBackward0")

    def block(self, path: str, x: str, d: int, poison: bool) -> str:
        self.modules[path] = "Block"
        self.modules[f"{path}.attn"] = "Attention"
        h = self.norm(f"{path}.ln1", x, d)
        q = self.linear(f"{path}.attn.q", h, d, d)
        k = self.linear(f"{path}.attn.k", h, d, d)
        v = self.linear(f"{path}.attn.v", h, d, d)
        kt = self.add("op", "transpose", f"{path}.attn", [k], (d, 64), 0.5, "TransposeBackward0")
        s = self.add("op", "mm", f"{path}.attn", [q, kt], (64, 64), 2.0, "MmBackward0")
        s = self.add("op", "div", f"{path}.attn", [s], (64, 64), 0.3, "DivBackward0", nan=poison)
        if poison:
            self.nan_at = s
        p = self.add("op", "_softmax", f"{path}.attn", [s], (64, 64), 0.02, "SoftmaxBackward0")
        a = self.add("op", "mm", f"{path}.attn", [p, v], (64, d), 0.5, "MmBackward0")
        o = self.linear(f"{path}.attn.o", a, d, d)
        x = self.add("op", "add", path, [x, o], (64, d), 1.0, "AddBackward0")
        self.modules[f"{path}.mlp"] = "MLP"
        h = self.norm(f"{path}.ln2", x, d)
        h = self.linear(f"{path}.mlp.fc1", h, d, 4 * d)
        h = self.add("op", "gelu", f"{path}.mlp", [h], (64, 4 * d), 0.4, "GeluBackward0")
        h = self.linear(f"{path}.mlp.fc2", h, 4 * d, d)
        return self.add("op", "add", path, [x, h], (64, d), 1.0, "AddBackward0")


def big_trace(n_nodes: int = 30_000, stages: int = 6, d: int = 32) -> Trace:
    """A trace of about ``n_nodes`` nodes (a few more, never fewer): ``stages`` stages of equal blocks."""
    b = _Builder()
    blocks = max(1, -(-(n_nodes - 8) // (stages * NODES_PER_BLOCK)))
    x = b.add("input", "input 0", "", [], (64, d), 1.0)
    b.modules["stages"] = "ModuleList"
    poison_stage, poison_block = stages * 2 // 3, blocks // 3
    for s in range(stages):
        b.modules[f"stages.{s}"] = "Stage"
        b.modules[f"stages.{s}.blocks"] = "ModuleList"
        for k in range(blocks):
            x = b.block(f"stages.{s}.blocks.{k}", x, d, poison=(s, k) == (poison_stage, poison_block))
    x = b.norm("head.ln", x, d)
    x = b.linear("head.out", x, d, 10)
    x = b.add("op", "_log_softmax", "", [x], (64, 10), 1.0, "LogSoftmaxBackward0")
    loss = b.add("op", "nll_loss_forward", "", [x], (), 2.3, "NllLossBackward0")
    # Backprop visits ops and parameters from the loss back, reverse forward order.
    back = [n for n in reversed(b.nodes) if n.kind != "input"]
    step = {n.key: i for i, n in enumerate(back)}
    nodes = tuple(TraceNode(**{**n.__dict__, "backward_step": step.get(n.key)}) for n in b.nodes)
    return Trace(nodes, tuple(b.edges), loss, b.modules, OptimizerStep("SGD", 0.01, (("momentum", "0.9"),)))


if __name__ == "__main__":  # python -m tests.big_trace: size and build time
    import time

    t0 = time.perf_counter()
    t = big_trace()
    print(f"{len(t.nodes)} nodes, {len(t.edges)} edges in {time.perf_counter() - t0:.2f} s")
