"""What the teaching fields cost at capture: source location and args per op, gradient per edge.

Traces a model of many small ops with each feature switched off in turn (by
patching the function that computes it) and reports µs per op node. Run:

    PYTHONPATH=. python3 benchmarks/teaching_cost.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from unittest import mock

import torch
import torch.nn.functional as F

import gradtrace
from gradtrace.recorder import backward, forward, provenance


def _model():
    torch.manual_seed(0)
    from tests.models import GPT

    model = GPT(layers=4)
    tokens = torch.randint(0, 64, (2, 16))
    return model, tokens, lambda out: F.cross_entropy(out.flatten(0, 1), tokens.flatten())


def _no_edge_grads(roots):
    g = _walk(roots)
    g.slots.clear()
    return g


_walk = backward.walk


def _time(patches: list[str], repeat: int) -> tuple[float, int]:
    model, tokens, loss = _model()
    times = []
    n_ops = 0
    for _ in range(repeat):
        with ExitStack() as stack:
            if "source" in patches:
                stack.enter_context(mock.patch.object(forward, "user_frame", lambda: None))
            if "args" in patches:
                stack.enter_context(mock.patch.object(forward, "describe_args", lambda *a: ""))
            if "edges" in patches:
                stack.enter_context(mock.patch("gradtrace.recorder.session.walk", _no_edge_grads))
            t0 = time.process_time()  # CPU time of this process: the machine is shared
            t = gradtrace.trace(model, tokens, loss=loss)
            times.append(time.process_time() - t0)
            n_ops = sum(1 for n in t.nodes if n.kind == "op")
    return min(times), n_ops  # the least disturbed run: the machine is shared


def per_call() -> None:
    """The per-op price of the source lookup alone, called from inside a model's forward (µs/call)."""
    model, tokens, _ = _model()
    seen: list[float] = []

    class Probe(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.perf_counter_ns()
            for _ in range(100):
                provenance.user_frame()
            seen.append((time.perf_counter_ns() - t0) / 100 / 1e3)
            return func(*args, **(kwargs or {}))

    with Probe():
        model(tokens)
    print(f"  user_frame(): {min(seen):.2f} µs/op best, {sorted(seen)[len(seen) // 2]:.2f} µs/op median over {len(seen)} ops")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    _time([], 3)  # warm up
    features = ("source", "args", "edges")
    configs = {"none": list(features), **{f: [o for o in features if o != f] for f in features}, "all": []}
    best: dict[str, float] = {}
    n = 0
    for _ in range(args.repeat):  # interleaved, so a busy moment of the machine hits every variant alike
        for name, patches in configs.items():
            t, n = _time(patches, 1)
            best[name] = min(best.get(name, t), t)
    base = best["none"]
    per_call()
    print(f"model: GPT(layers=4), {n} op nodes; trace() without the teaching fields: {base * 1e3:.1f} ms (best of {args.repeat})")
    for name in (*features, "all"):
        t = best[name]
        print(f"  + {name:<6}: {(t - base) / n * 1e6:+.2f} µs/op ({(t / base - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
