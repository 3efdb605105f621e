"""The cost of watching a whole run, side by side with the plain run, in one process (issue #16's rows).

    python3 benchmarks/watch_bench.py                 # GPT-like 6×512 and ResNet-18-like, 50 steps each (CPU, minutes)
    python3 benchmarks/watch_bench.py --quick         # small models, seconds (a dry run)
    python3 benchmarks/watch_bench.py --device cuda   # the same rows on a GPU
    python3 benchmarks/watch_bench.py --only-targets  # only the columns with a target (faster)

Each row is the same 50-step training loop (AdamW, fixed batch) run:

  plain           no gradtrace
  watch default   gradtrace.watching engine, adaptive sampling (the `gradtrace watch` default)      target ≤ 1.05×
  watch every 1   every step sampled (`--every 1`)                                              target ≤ 1.3×
  check sentinel  the `check --every-step` sentinel, never firing                               target ≤ 1.1×
  + activations   the sentinel plus a finiteness check of every module output (not shipped: measured to decide)
  snapshot        the alternative to re-running: copy params, optimizer state, RNG and batch every step

The runs take turns (plain, default, every 1, ...; then again) and each
figure is the median over the repeats, so a slow spell of the shared machine
falls on all of them.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent.parent))
from gradtrace.watching.engine import Watcher  # noqa: E402
from tests.models import GPT, ResNet  # noqa: E402


def gpt(device: torch.device, quick: bool):
    torch.manual_seed(0)
    if quick:
        model, tok = GPT(vocab=64, dim=32, layers=2, heads=2, context=16), torch.randint(0, 64, (2, 16))
    else:
        model, tok = GPT(vocab=1000, dim=512, layers=6, heads=8, context=128), torch.randint(0, 1000, (4, 128))
    model, tok = model.to(device), tok.to(device)
    return model, lambda: F.cross_entropy(model(tok).flatten(0, 1), tok.flatten()), (tok,)


def resnet(device: torch.device, quick: bool):
    torch.manual_seed(0)
    model = ResNet(width=8 if quick else 64).to(device)
    px, b = (32, 2) if quick else (128, 8)
    x, y = torch.randn(b, 3, px, px, device=device), torch.randint(0, 10, (b,), device=device)
    return model, lambda: F.cross_entropy(model(x), y), (x, y)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor], steps: int,
          before_step: Callable[[], None] | None = None) -> None:
    for _ in range(steps):
        if before_step is not None:
            before_step()
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()


def snapshotter(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """What a replay of any step would need, copied before each step (the alternative the re-run avoids)."""
    kept: list[Any] = []

    def snap() -> None:
        with torch.no_grad():
            params = [p.detach().clone() for p in model.parameters()]
            buffers = [b.clone() for b in model.buffers()]
            state = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for s in opt.state.values()]
            kept[:] = [params, buffers, state, torch.get_rng_state(), [t.clone() for t in batch]]

    return snap


def activation_hook() -> Any:
    flags: list[torch.Tensor] = []

    def hook(module: Any, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            flags.append(torch.isfinite(out).all())

    return torch.nn.modules.module.register_module_forward_hook(hook), flags


def measure(build: Callable[[torch.device, bool], Any], device: torch.device, quick: bool, steps: int, repeats: int,
            rows: list[str]) -> dict[str, float]:
    model, loss_fn, batch = build(device, quick)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def plain() -> None:
        train(model, opt, loss_fn, steps)

    def watched(every: int | None) -> Callable[[], None]:
        def run() -> None:
            with Watcher(model, every=every):
                train(model, opt, loss_fn, steps)
        return run

    def sentinel() -> None:
        with Watcher(model, sentinel=True, sample=False):
            train(model, opt, loss_fn, steps)

    def sentinel_activations() -> None:
        handle, flags = activation_hook()
        try:
            with Watcher(model, sentinel=True, sample=False):
                train(model, opt, loss_fn, steps, lambda: flags.clear())
        finally:
            handle.remove()

    def snapshot() -> None:
        train(model, opt, loss_fn, steps, snapshotter(model, opt, batch))

    runs = {"plain": plain, "watch default": watched(None), "watch every 1": watched(1), "check sentinel": sentinel,
            "+ activations": sentinel_activations, "snapshot": snapshot}
    runs = {k: v for k, v in runs.items() if k == "plain" or k in rows}
    train(model, opt, loss_fn, 3)  # warm-up (Adam's state, allocator)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            gc.collect()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


TARGETS = {"watch default": 1.05, "watch every 1": 1.3, "check sentinel": 1.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small models (a dry run)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="gpt,resnet", help="which rows: gpt, resnet or both (comma-separated)")
    parser.add_argument("--only-targets", action="store_true",
                        help="run only the columns with a target (plain, watch default, watch every 1, check sentinel)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {args.steps} steps, median of {args.repeats}")
    names = ["plain", "watch default", "watch every 1", "check sentinel", "+ activations", "snapshot"]
    if args.only_targets:
        names = ["plain", *TARGETS]
    print(f"{'model':<26}" + "".join(f"{n:>16}" for n in names))
    chosen = set(args.models.split(","))
    for label, build in (("gpt-like 6L×512 s128 b4", gpt), ("resnet-18-like 128px b8", resnet)):
        if build.__name__ not in chosen:
            continue
        if args.quick:
            label = label.split()[0] + " (quick)"
        t = measure(build, device, args.quick, args.steps, args.repeats, names)
        cells = [f"{t['plain']:.2f} s"] + [f"{t[n] / t['plain']:.3f}×" + ("" if n not in TARGETS else (" ok" if t[n] / t["plain"] <= TARGETS[n] else " MISS"))
                                          for n in names[1:]]
        print(f"{label:<26}" + "".join(f"{c:>16}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
