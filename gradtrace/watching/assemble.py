"""Turn what a :class:`~gradtrace.watching.engine.Watcher` read to the host into the history document."""

from __future__ import annotations

import math
from typing import Any

from .engine import Watcher
from .sentinel import word
from .history import FORMAT, VERSION, History, json_number

__all__ = ["alarm_events", "assemble_history"]


def assemble_history(w: Watcher, traces: dict[int, dict[str, Any]] | None = None, *,
                     extra_events: list[dict[str, Any]] | None = None, plain_s: float | None = None) -> History:
    """The history of ``w`` (closed, or flushed) with ``traces`` (step -> ``Trace.to_dict()``) embedded."""
    w.flush()
    steps = sorted(set(w.sampled))
    index = {s: i for i, s in enumerate(steps)}
    n = len(steps)
    shapes = {shown_param(w, name): shape for name, shape in w.param_shapes.items()}

    param_series: dict[str, dict[str, list[Any]]] = {}
    loss: list[Any] = [None] * n
    losses_by_opt: dict[str, list[Any]] = {}
    lr: dict[str, list[Any]] = {}
    grad_sq: dict[int, dict[str, float]] = {}  # step -> param name -> grad norm², for module norms
    # A parameter two optimizers step (shared, or an optimizer wrapping another, Lookahead-style) has a series per
    # optimizer: the first keeps the bare name, the others are 'NAME (optN)'. One series would hold whichever step came
    # last, as if it were the parameter's whole update.
    holders: dict[str, list[str]] = {}  # raw parameter name -> the optimizers whose rows hold it
    for r, _ in w._host_rows:
        for raw in r.param_names:
            if r.opt not in holders.setdefault(raw, []):
                holders[raw].append(r.opt)
    order = {o.name: k for k, o in enumerate(w.opts.values())}
    for opts in holders.values():
        opts.sort(key=lambda o: order.get(o, -1))
    shared_events: list[dict[str, Any]] = []
    alias: dict[str, str] = {}  # 'NAME (optN)' -> NAME
    for r, values in w._host_rows:
        if r.step not in index:
            continue
        i = index[r.step]
        k = len(r.param_ids)
        for j, raw in enumerate(r.param_names):
            name = shown_param(w, raw)
            extra_holder = r.opt != holders[raw][0]
            if extra_holder:
                alias[f"{name} ({r.opt})"] = name
                name = f"{name} ({r.opt})"
            gn, bad, vn, dn = values[j], values[k + j], values[2 * k + j], values[3 * k + j]
            series = param_series.setdefault(name, {m: [None] * n for m in ("grad_norm", "grad_rms", "value_norm", "update_ratio", "grad_nonfinite")})
            series["grad_norm"][i] = json_number(gn)
            series["grad_rms"][i] = json_number(gn / math.sqrt(r.numels[j]) if r.numels[j] else math.nan)
            series["value_norm"][i] = json_number(vn)
            # (no optimizer: the change the user's own code makes is not seen; a missing sample, not a NaN)
            ratio = None if r.opt == "backward" or dn < 0 else dn / vn if vn else (0.0 if dn == 0 else math.inf)
            series["update_ratio"][i] = json_number(ratio)
            series["grad_nonfinite"][i] = int(bad) if math.isfinite(bad) else None
            if not extra_holder:  # (its gradient is counted once in its module's norm)
                grad_sq.setdefault(r.step, {})[name] = gn * gn
        row_loss = values[-1]
        if row_loss is not None:
            losses_by_opt.setdefault(r.opt, [None] * n)[i] = json_number(row_loss)
        for gi, v in enumerate(r.lrs):
            lr.setdefault(f"{r.opt}/group{gi}", [None] * n)[i] = json_number(v)
    lead = "opt0" if "opt0" in losses_by_opt else "backward" if "backward" in losses_by_opt else None
    if lead is not None:
        loss = losses_by_opt[lead]
    loss_all = {s: v for s, v in w.loss_all}
    for s, i in index.items():  # a sampled step whose row had no loss (no backward seen): take it from every step's
        if loss[i] is None and s in loss_all:
            loss[i] = json_number(loss_all[s])

    module_paths = sorted(w.classes, key=lambda p: (w.root_of.get(p, ""), p))
    shown = {path: shown_path(w, path) for path in module_paths}
    # The parameters the unnamed root's norm covers (only when one model keeps the bare names): its own, and
    # tensors only an optimizer holds.
    top = {name for sq in grad_sq.values() for name in sq if w.root_of.get(_module_of(name), "") == ""}
    module_series: dict[str, dict[str, list[Any]]] = {}
    for path in module_paths:
        series = {"out_rms": [None] * n, "out_nonfinite": [None] * n, "grad_norm": [None] * n}
        for s, i in index.items():
            out = w._module_rows.get(s, {}).get(path)
            if out is not None:
                series["out_rms"][i] = json_number(out[0])
                series["out_nonfinite"][i] = int(out[1])
            sq = grad_sq.get(s)
            if sq:
                own = [v for name, v in sq.items() if shown[path] == "" and name in top or name.startswith(shown[path] + ".")]
                if own:
                    series["grad_norm"][i] = json_number(math.sqrt(sum(own)))
        module_series[shown[path]] = series

    modules = []
    for path in module_paths:
        root = w.root_of.get(path, "")
        if path == root:
            parent, depth = None, 0
        else:
            inner = path[len(root) + 1:] if root else path
            parent = path.rsplit(".", 1)[0] if "." in inner else root
            depth = inner.count(".") + 1
        modules.append({"path": shown[path], "type": w.classes[path], "parent": shown.get(parent, parent) if parent is not None else None,
                        "depth": depth})

    for raw, opts in holders.items():
        if len(opts) > 1:
            base = shown_param(w, raw)
            shared_events.append({"step": steps[0] if steps else 1, "kind": "warning", "module": _module_of(base),
                                  "param": base, "text": f"{base} is stepped by {len(opts)} optimizers ({', '.join(opts)}): "
                                  f"its statistics are shown per optimizer, as {base} ({opts[0]}'s step) and "
                                  + ", ".join(f"{base} ({o})" for o in opts[1:])})
    root_order = [r.prefix for r in w.roots]
    optimizers = []
    for o in w.opts.values():
        optimizers.append({"name": o.name, "type": o.type_name, "params": len(o.held), "steps": o.count,
                           # the models (roots) whose parameters it steps, in the order they were first called
                           "roots": [shown_path(w, r) for r in sorted(o.roots, key=root_order.index)]})

    events = sorted([*w.events, *w.alarm_events(), *shared_events, *(extra_events or [])], key=lambda e: (e["step"], e["kind"] != "alarm"))
    alarms = [e["step"] for e in events if e["kind"] == "alarm"]
    if w.alarm is not None:
        alarms.append(w.alarm.step)
    data: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "script": w.script,
        "every": w.every if w.every is not None else w._period,
        "every_rule": "fixed" if w.every is not None else f"adaptive: sampled steps add about {round(100 * _budget())} % to the run",
        "steps_run": w.steps_run, "steps": steps, "loss": loss,
        "loss_all": [[s, json_number(v)] for s, v in w.loss_all],
        "lr": lr, "optimizers": optimizers, "modules": modules,
        "params": [{"name": name, "module": _module_of(alias.get(name, name)), "shape": shapes.get(alias.get(name, name))}
                   for name in param_series],
        "series": {"module": module_series, "param": param_series},
        "events": events, "first_alarm": min(alarms) if alarms else None,
        "traces": {str(k): v for k, v in sorted((traces or {}).items())},
        "overhead": {"plain_s": plain_s, "watched_s": w.elapsed},
    }
    if len(losses_by_opt) > 1 or w.other_losses:
        data["losses"] = losses_by_opt  # (added field) each optimizer's own loss, e.g. a GAN's D and G
        # (added field) and every step's, as loss_all is the lead's
        lead_name = "backward" if lead == "backward" else "opt0"
        data["losses_all"] = {lead_name: data["loss_all"], **{name: [[s, json_number(v)] for s, v in values]
                                                             for name, values in sorted(w.other_losses.items())}}
    if w.clip:
        data["clip"] = {"before": [json_number(w.clip[s][0]) if s in w.clip else None for s in steps],
                        "after": [json_number(w.clip[s][1]) if s in w.clip else None for s in steps]}
    return History(data)


def alarm_events(w: Watcher) -> list[dict[str, Any]]:
    """Alarms read off the sampled steps and every step's loss: non-finite loss, gradients, outputs."""
    events: list[dict[str, Any]] = []
    seen_loss = False
    for step, loss in w.loss_all:
        if not math.isfinite(loss) and not seen_loss:
            events.append({"step": step, "kind": "alarm", "text": f"loss is {word(loss)}", "module": None, "param": None})
            seen_loss = True
    for r, values in w._host_rows:
        n = len(r.param_ids)
        bad = [i for i in range(n) if values[n + i] > 0]
        if bad:
            name = shown_param(w, r.param_names[bad[0]])
            events.append({"step": r.step, "kind": "alarm", "param": name, "module": _module_of(name),
                           "text": f"gradient of {name} has {int(values[n + bad[0]])} non-finite values"
                                   + (f" ({len(bad)} parameters affected)" if len(bad) > 1 else "")})
    for step in sorted(w._module_rows):
        for path, (_, bad) in w._module_rows[step].items():
            if bad > 0:
                path = shown_path(w, path)
                events.append({"step": step, "kind": "alarm", "module": path, "param": None,
                               "text": f"output of {path or 'the model'} has {int(bad)} non-finite values"})
                break
    return events


def root_names(w: Watcher) -> dict[str, str]:
    """How the history names each root (top-level model), by the prefix the engine gave it.

    One model with parameters (the usual case, whatever else is called at the top, a loss module): it keeps
    no prefix (``0.weight``). Two or more (a GAN's D and G): every root is named by its class, numbered
    in the order the script first called them when classes repeat (``Sequential.0.weight``,
    ``Sequential2.0.weight``), so no model's names are the bare ones and the names say which is which.
    (The engine names the first root '' and later ones by class as it meets them; the history decides at
    the end, when every root is known.)
    """
    mapping: dict[str, str] = {}
    if sum(1 for r in w.roots if r.has_params) >= 2:
        taken: set[str] = set()
        for r in w.roots:
            old, base = r.prefix, r.cls
            new = base
            k = 2
            while new in taken:
                new, k = f"{base}{k}", k + 1
            taken.add(new)
            mapping[old] = new
    return mapping


def shown_path(w: Watcher, path: str) -> str:
    """A module path as the history writes it (its root renamed by :func:`root_names`)."""
    root = w.root_of.get(path)
    new = root_names(w).get(root) if root is not None else None
    if new is None:
        return path
    return (new if path == "" else f"{new}.{path}") if root == "" else new + path[len(root):]


def shown_param(w: Watcher, name: str) -> str:
    """A parameter name as the history writes it (see :func:`shown_path`)."""
    module, _, leaf = name.rpartition(".")
    if w.root_of.get(module) is None:
        return name
    moved = shown_path(w, module)
    return f"{moved}.{leaf}" if moved else leaf


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else ""


def _budget() -> float:
    from .engine import BUDGET

    return BUDGET
