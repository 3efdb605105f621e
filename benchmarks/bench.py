"""gradtrace's cost, measured side by side with a plain step, torchviz and torchlens, in one run.

    python3 benchmarks/bench.py                  # the full table (CPU), a few minutes
    python3 benchmarks/bench.py --quick          # small models only, fewer repeats
    python3 benchmarks/bench.py --device cuda --capture-only
    python3 benchmarks/bench.py --device cuda --real     # issue #15's real-size models only (GPU, minutes)
    python3 benchmarks/bench.py --device cpu --real --tiny --capture-only   # their dry run, seconds
    python3 benchmarks/bench.py --real --src ../base     # measure the gradtrace found in another tree

Every figure is a median of several repeats, after one warm-up. Ratios are
taken between runs of the same model in the same process, the plain step and
the traced one taking turns, so they hold on a noisy machine better than
absolute times do.

Columns:
  nodes       ops + parameters + inputs in the trace
  plain ms    forward + backward, no tracing
  capture     gradtrace.trace() (values + gradients, no rendering) ÷ plain
  µs/node     (trace − plain) ÷ nodes
  mem         peak memory during capture ÷ peak during the plain step (cuda only)
  svg s       gradtrace.trace + render to SVG (folded/collapsed per defaults)
  ÷torchviz   that ÷ torchviz make_dot(loss).render(svg) on the same step
  ÷torchlens  that ÷ torchlens trace + log_backward + draw(svg)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode



def _source_tree() -> Path:
    """``--src DIR``: the tree to import gradtrace from (a baseline checkout, measured with this very
    benchmark); else this benchmark's own project. Read before the import, hence by hand."""
    for i, arg in enumerate(sys.argv):
        if arg == "--src" and i + 1 < len(sys.argv):
            return Path(sys.argv[i + 1]).resolve()
        if arg.startswith("--src="):
            return Path(arg.split("=", 1)[1]).resolve()
    return Path(__file__).resolve().parent.parent


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(_source_tree()))
import gradtrace  # noqa: E402
from gradtrace.recorder.backward import walk  # noqa: E402
from tests.models import GPT, MLP, ResNet  # noqa: E402
from real_models import REAL  # noqa: E402


@dataclasses.dataclass
class Case:
    name: str
    build: Callable[[torch.device], tuple[torch.nn.Module, tuple[Any, ...], Callable[[Any], torch.Tensor]]]
    compare: bool = True  # run torchviz / torchlens on it
    working: bool = False  # a "working size" model (the 1.5x target)


def gpt(layers: int, dim: int, seq: int, batch: int, vocab: int = 512, heads: int = 4):
    def build(device: torch.device):
        torch.manual_seed(0)
        model = GPT(vocab=vocab, dim=dim, layers=layers, heads=heads, context=seq).to(device)
        tok = torch.randint(0, vocab, (batch, seq), device=device)
        return model, (tok,), lambda out: F.cross_entropy(out.flatten(0, 1), tok.flatten())

    return build


def resnet(width: int, px: int, batch: int):
    def build(device: torch.device):
        torch.manual_seed(0)
        model = ResNet(width=width).to(device)
        x = torch.randn(batch, 3, px, px, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        return model, (x,), lambda out: F.cross_entropy(out, y)

    return build


def mlp(device: torch.device):
    torch.manual_seed(0)
    model = MLP(64, 32, 10).to(device)
    x = torch.randn(32, 64, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    return model, (x,), lambda out: F.nll_loss(out, y)


CASES = [
    Case("mlp (training loop)", mlp),
    Case("resnet-like 8px w8", resnet(8, 32, 2)),
    Case("gpt-like 2L×64", gpt(2, 64, 16, 2, vocab=64)),
    Case("gpt-like 12L×64", gpt(12, 64, 16, 2, vocab=64)),
    Case("gpt-like 48L×64", gpt(48, 64, 16, 2, vocab=64), compare=False),
    Case("gpt-like 6L×512 s128 b4", gpt(6, 512, 128, 4, vocab=1000, heads=8), compare=False, working=True),
    Case("resnet-18-like 128px b8", resnet(64, 128, 8), compare=False, working=True),
]


FLOOR_CASE = "gpt-like 12L×64"  # the per-node target's model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_times(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median time of each function, run in turns (a, b, c, a, b, c, ...) after one warm-up each,
    so that a slow spell of a shared machine falls on all of them rather than on one."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    return paired_times({"fn": fn}, device, repeats)["fn"]


def plain_step(model, inputs, loss) -> None:
    for p in model.parameters():
        p.grad = None
    loss(model(*inputs)).backward()


class _EmptyMode(TorchDispatchMode):
    """A dispatch mode that does nothing: what intercepting every op costs before recording anything."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # as gradtrace's recorder: no per-call dynamo-disable wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def mechanism_floor(model, inputs, loss) -> None:
    """Forward under an empty dispatch mode, a no-op pre-hook on every autograd node, backward:
    the interception gradtrace's capture is built on, with no statistics and no records."""
    for p in model.parameters():
        p.grad = None
    with _EmptyMode():
        root = loss(model(*inputs))
    handles = [node.register_prehook(lambda grads: None) for node in walk([root.grad_fn]).nodes.values()]
    root.backward()
    for h in handles:
        h.remove()


def peak_ratio(model, inputs, loss, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peaks = []
    for fn in (lambda: plain_step(model, inputs, loss), lambda: gradtrace.trace(model, *inputs, loss=loss)):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    return peaks[1] / peaks[0]


def tensors_in(obj: Any) -> int:
    """How many tensors a Trace holds (it must be none: statistics only)."""
    if isinstance(obj, torch.Tensor):
        return 1
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensors_in(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(tensors_in(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensors_in(o) for o in obj.values())
    return 0


def gradtrace_svg(model, inputs, loss, out: str) -> None:
    gradtrace.trace(model, *inputs, loss=loss).render(out)


def torchviz_svg(model, inputs, loss, out: str) -> None:
    import torchviz

    lo = loss(model(*inputs))
    torchviz.make_dot(lo, params=dict(model.named_parameters())).render(out.removesuffix(".svg"), format="svg", cleanup=True)


def torchlens_svg(model, inputs, loss, out: str) -> None:
    import torchlens

    tr = torchlens.trace(model, list(inputs))
    tr.draw(vis_outpath=out.removesuffix(".svg"), vis_fileformat="svg", vis_save_only=True)


def compare(fn: Callable[..., None], case_args: tuple, device: torch.device, repeats: int, out: str) -> float | str:
    try:
        return median_time(lambda: fn(*case_args, out), device, repeats)
    except RecursionError:
        return "RecursionError"
    except ImportError as e:
        return f"not installed ({e.name})"
    except Exception as e:  # a competitor failing is a result, not a crash of the benchmark
        return f"{type(e).__name__}"


def fmt(x: float | str | None, spec: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small models only, 3 repeats")
    parser.add_argument("--capture-only", action="store_true", help="no rendering, no torchviz/torchlens (for a machine without Graphviz)")
    parser.add_argument("--real", action="store_true", help="only issue #15's real-size models (GPT-2 124M, Llama-style, ResNet-50; fp32 and bf16 autocast)")
    parser.add_argument("--tiny", action="store_true", help="with --real: shrunk models, a dry run for a CPU")
    parser.add_argument("--working", action="store_true", help="only the working-size rows (the CPU target's)")
    parser.add_argument("--src", help="import gradtrace from this tree (a baseline) instead of this project")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 3 if args.quick else args.repeats
    cases = [c for c in CASES if not (args.quick and c.working)]
    if args.working:
        cases = [c for c in CASES if c.working]
    if args.real:
        cases = [Case(name, (lambda b: lambda dev: b(dev, args.tiny))(build), compare=False) for name, build in REAL.items()]
    print(f"gradtrace from {Path(gradtrace.__file__).parent}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"medians of {repeats} repeats after a warm-up\n")
    header = f"{'model':<26}{'nodes':>7}{'plain ms':>10}{'capture':>9}{'µs/node':>9}{'mem':>8}{'held':>6}"
    if not args.capture_only:
        header += f"{'svg s':>8}{'÷torchviz':>16}{'÷torchlens':>16}"
    print(header)
    growth = []
    floor = None
    tmp = tempfile.mkdtemp(prefix="gradtrace-bench-")
    for case in cases:
        model, inputs, loss = case.build(device)
        runs = {"plain": lambda: plain_step(model, inputs, loss), "trace": lambda: gradtrace.trace(model, *inputs, loss=loss)}
        if case.name == FLOOR_CASE:
            runs["floor"] = lambda: mechanism_floor(model, inputs, loss)
        times = paired_times(runs, device, repeats)
        t_plain, t_trace = times["plain"], times["trace"]
        trace = gradtrace.trace(model, *inputs, loss=loss)
        nodes = len(trace.nodes)
        held = tensors_in(trace)
        mem = peak_ratio(model, inputs, loss, device)
        per_node = (t_trace - t_plain) / nodes * 1e6
        if case.name.startswith("gpt-like") and "×64" in case.name:
            growth.append((nodes, t_trace - t_plain))
        if case.name == FLOOR_CASE:
            floor = (nodes, t_plain, times["floor"], t_trace)
        row = (f"{case.name:<26}{nodes:>7}{t_plain * 1e3:>10.1f}{t_trace / t_plain:>8.2f}×{per_node:>9.0f}"
               f"{fmt(mem, '.2f'):>8}{held:>6}")
        if not args.capture_only:
            out = os.path.join(tmp, "g.svg")
            t_svg = median_time(lambda: gradtrace_svg(model, inputs, loss, out), device, repeats)
            row += f"{t_svg:>8.2f}"
            for fn in (torchviz_svg, torchlens_svg):
                if case.compare or fn is torchviz_svg:
                    other = compare(fn, (model, inputs, loss), device, max(1, repeats // 2) if fn is torchlens_svg else repeats, out)
                    cell = f"{t_svg / other:.2f}× ({other:.2f}s)" if isinstance(other, float) else other
                else:
                    cell = "skipped"
                row += f"{cell:>16}"
        print(row, flush=True)
    if len(growth) >= 2:
        (n0, c0), (n1, c1) = growth[0], growth[-1]
        print(f"\ncapture overhead growth, gpt-like ×64: {n0} → {n1} nodes ({n1 / n0:.1f}×), overhead {c0 * 1e3:.1f} → {c1 * 1e3:.1f} ms ({c1 / c0:.1f}×)")
    if floor is not None:
        nodes, t_plain, t_floor, t_trace = floor
        print(f"interception floor, {FLOOR_CASE}: empty dispatch mode + a no-op pre-hook per node costs "
              f"{(t_floor - t_plain) / nodes * 1e6:.0f} µs/node ({t_floor / t_plain:.2f}× plain); "
              f"gradtrace.trace {(t_trace - t_plain) / nodes * 1e6:.0f} µs/node ({t_trace / t_plain:.2f}×)")
    print("held = tensors stored in the returned Trace (statistics only: must be 0)")


if __name__ == "__main__":
    main()
