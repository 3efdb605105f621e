"""A synthetic watch history (docs/watch_schema: ``gradtrace-watch`` version 1) for the watch page's tests.

The engine that records a real run is built elsewhere; the page only reads the dict, so its tests
build one here with the same shape a GPT-like run gives: a 6-block model tree (78 modules, 101
parameters), 500 sampled steps, a loss that turns NaN in the hundreds (an alarm), a step the
GradScaler skipped, a warning, lr warm-up then cosine decay, clip norms, and full step traces made
by the real :func:`gradtrace.trace` on a small model (one healthy, one with a NaN in it).

Values follow deterministic curves with seeded noise (``random.Random``), so two builds are equal.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F

import gradtrace

from .models import MLP

NAN_STRINGS = {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}


def _num(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def as_float(x: float | str | None) -> float | None:
    """A history number back as a float ("NaN" -> nan); None stays None."""
    return NAN_STRINGS[x] if isinstance(x, str) else x


def gpt_tree(layers: int, names: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The modules and parameters of a GPT-like model with ``layers`` blocks (12 modules, 16 parameters
    each, plus 6 modules and 5 parameters around them). ``names`` renames path components (hostile tests)."""
    names = names or {}
    n = lambda s: names.get(s, s)  # noqa: E731
    modules: list[dict[str, Any]] = []
    params: list[dict[str, Any]] = []

    def mod(path: str, typ: str, parent: str | None) -> None:
        modules.append({"path": path, "type": typ, "parent": parent, "depth": 0 if path == "" else path.count(".") + 1})

    def par(module: str, leaf: str, shape: list[int]) -> None:
        params.append({"name": f"{module}.{leaf}" if module else leaf, "module": module, "shape": shape})

    d = 64
    mod("", "GPT", None)
    mod(n("tok_emb"), "Embedding", "")
    par(n("tok_emb"), "weight", [1000, d])
    mod(n("pos_emb"), "Embedding", "")
    par(n("pos_emb"), "weight", [128, d])
    mod(n("blocks"), "ModuleList", "")
    for i in range(layers):
        b = f"{n('blocks')}.{i}"
        mod(b, n("Block"), n("blocks"))
        for ln in ("ln1", "ln2"):
            mod(f"{b}.{ln}", "LayerNorm", b)
            par(f"{b}.{ln}", "weight", [d])
            par(f"{b}.{ln}", "bias", [d])
        mod(f"{b}.{n('attn')}", "SelfAttention", b)
        for lin in ("q", "k", "v", "proj"):
            mod(f"{b}.{n('attn')}.{lin}", "Linear", f"{b}.{n('attn')}")
            par(f"{b}.{n('attn')}.{lin}", "weight", [d, d])
            par(f"{b}.{n('attn')}.{lin}", "bias", [d])
        mod(f"{b}.mlp", "MLP", b)
        mod(f"{b}.mlp.fc", "Linear", f"{b}.mlp")
        par(f"{b}.mlp.fc", "weight", [4 * d, d])
        par(f"{b}.mlp.fc", "bias", [4 * d])
        mod(f"{b}.mlp.act", "GELU", f"{b}.mlp")
        mod(f"{b}.mlp.proj", "Linear", f"{b}.mlp")
        par(f"{b}.mlp.proj", "weight", [d, 4 * d])
        par(f"{b}.mlp.proj", "bias", [d])
    mod("ln_f", "LayerNorm", "")
    par("ln_f", "weight", [d])
    par("ln_f", "bias", [d])
    mod("head", "Linear", "")
    par("head", "weight", [1000, d])
    # Sort into tree order (a parent before its children), as the engine writes them.
    return modules, params


def small_traces() -> dict[str, dict[str, Any]]:
    """Two real step traces: a healthy one and one whose first layer's weight holds a NaN."""
    torch.manual_seed(0)
    net = MLP(4, 6, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    healthy = gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))
    with torch.no_grad():
        net.fc1.weight[0, 0] = float("nan")
    broken = gradtrace.trace(net, x, loss=lambda out: F.nll_loss(out, y))
    return {"healthy": healthy.to_dict(), "nan": broken.to_dict()}


def build_history(steps: int = 500, every: int = 1, layers: int = 6, *, nan_at: int | None = 312,
                  skipped_at: int | None = 40, traces: bool = True, script: str = "train.py",
                  names: dict[str, str] | None = None, event_text: str = "", seed: int = 0) -> dict[str, Any]:
    """A history of ``steps`` sampled optimizer steps (every ``every``-th step from step 1).

    ``nan_at``: the sampled step (1-based step number) whose loss and the gradients of blocks 3 and up
    turn NaN, and stay NaN after it (``None``: a healthy run). ``skipped_at``: a step the GradScaler
    skipped (its grad norms are inf; its update is 0). ``names`` renames module path components and
    ``event_text`` is appended to every event's text (hostile-string tests).
    """
    rng = random.Random(seed)
    modules, params = gpt_tree(layers, names)
    step_nums = [1 + i * every for i in range(steps)]
    nan_index = step_nums.index(nan_at) if nan_at in step_nums else None
    skip_index = step_nums.index(skipped_at) if skipped_at in step_nums else None
    broken_from = f"{(names or {}).get('blocks', 'blocks')}.3"

    def bad(path: str, i: int) -> bool:
        return nan_index is not None and i >= nan_index and (path.startswith(broken_from) or path in ("", "ln_f", "head"))

    def curve(base: float, i: int, decay: float) -> float:
        return base * math.exp(-decay * i / steps) * math.exp(rng.gauss(0.0, 0.15))

    module_series: dict[str, dict[str, list[Any]]] = {}
    for m in modules:
        depth_scale = 0.5 ** (m["path"].count(".")) if m["path"] else 2.0
        base = rng.uniform(0.2, 3.0) * depth_scale
        gn, rms, nf = [], [], []
        for i in range(steps):
            if bad(m["path"], i):
                gn.append("NaN")
                rms.append("NaN" if i > nan_index or m["path"].startswith(broken_from) else curve(base, i, 1.0))
                nf.append(4096 if m["path"].startswith(broken_from) else 0)
            elif i == skip_index:
                gn.append("inf")
                rms.append(_num(curve(base * 3, i, 0.5)))
                nf.append(0)
            else:
                gn.append(curve(base, i, 3.0))
                rms.append(curve(base * 3, i, 0.5))
                nf.append(0)
        module_series[m["path"]] = {"out_rms": rms, "out_nonfinite": nf, "grad_norm": gn}
    param_series: dict[str, dict[str, list[Any]]] = {}
    for p in params:
        base = rng.uniform(0.01, 1.0)
        gn, grms, vn, ur, gnf = [], [], [], [], []
        size = math.prod(p["shape"])
        for i in range(steps):
            if bad(p["module"], i):
                gn.append("NaN"), grms.append("NaN"), vn.append("NaN"), ur.append("NaN"), gnf.append(size)
            elif i == skip_index:
                gn.append("inf"), grms.append("inf"), vn.append(base * 10), ur.append(0.0), gnf.append(1)
            else:
                g = curve(base, i, 3.0)
                gn.append(g), grms.append(g / math.sqrt(size)), vn.append(base * 10 * (1 + i / steps))
                ur.append(curve(1e-3, i, 1.5)), gnf.append(0)
        param_series[p["name"]] = {"grad_norm": gn, "grad_rms": grms, "value_norm": vn, "update_ratio": ur,
                                   "grad_nonfinite": gnf}

    def lr(step: int) -> float:
        warm = 20 * every
        return 3e-4 * step / warm if step < warm else 3e-4 * 0.5 * (1 + math.cos(math.pi * step / (steps * every)))

    loss = []
    for i in range(steps):
        loss.append("NaN" if nan_index is not None and i >= nan_index else 5.0 * math.exp(-2.0 * i / steps) + 1.0 + rng.gauss(0, 0.05))
    loss_all = [[s, loss[i]] for i, s in enumerate(step_nums)] if every == 1 else []
    events: list[dict[str, Any]] = [
        {"step": step_nums[min(5, steps - 1)], "kind": "warning", "module": f"{(names or {}).get('blocks', 'blocks')}.0",
         "param": None, "text": "update ratio 0.02 is above 1e-2 for 3 parameters (warm-up too fast?)" + event_text},
    ]
    if skip_index is not None:
        events.append({"step": skipped_at, "kind": "skipped", "module": None, "param": None,
                       "text": "GradScaler skipped the step (inf in the scaled gradients); scale 65536 -> 32768" + event_text})
    if nan_index is not None:
        events.append({"step": nan_at, "kind": "alarm", "module": f"{broken_from}.{(names or {}).get('attn', 'attn')}",
                       "param": None, "text": "loss is NaN; first non-finite gradient in softmax" + event_text})
    history: dict[str, Any] = {
        "format": "gradtrace-watch", "version": 1, "script": script, "every": every,
        "steps_run": step_nums[-1] + every - 1, "steps": step_nums, "loss": loss, "loss_all": loss_all,
        "lr": {"opt0/group0": [lr(s) for s in step_nums], "opt0/group1": [lr(s) * 0.1 for s in step_nums]},
        "optimizers": [{"name": "opt0", "type": "AdamW", "params": len(params)}],
        "modules": modules, "params": params,
        "series": {"module": module_series, "param": param_series},
        "clip": {"before": [p if isinstance(p, str) else p * 4 for p in module_series[""]["grad_norm"]],
                 "after": [p if isinstance(p, str) else min(p * 4, 1.0) for p in module_series[""]["grad_norm"]]},
        "events": sorted(events, key=lambda e: e["step"]),
        "first_alarm": nan_at if nan_index is not None else None,
        "traces": {}, "overhead": {"plain_s": 10.0, "watched_s": 10.4},
    }
    if traces:
        t = small_traces()
        history["traces"] = {"1": t["healthy"]}
        if nan_index is not None:
            history["traces"][str(nan_at)] = t["nan"]
    return history
