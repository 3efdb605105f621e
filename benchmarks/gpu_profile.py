"""Where does one traced step spend its time? GPT-2 124M config, batch 4 × 256, fp32 (adapted from
shared/perf/gpu_profile.py). Prints kernel launches, syncs and copies of a plain step and a traced one,
launches per recorded op node, and the top of cProfile and torch.profiler for the traced step.

    python3 benchmarks/gpu_profile.py [--src TREE] [--device cpu --tiny]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
parser = argparse.ArgumentParser()
parser.add_argument("--src", default=str(Path(__file__).resolve().parent.parent))
parser.add_argument("--device", default="cuda")
parser.add_argument("--tiny", action="store_true")
args = parser.parse_args()
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(args.src).resolve()))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import gradtrace  # noqa: E402
from real_models import gpt2  # noqa: E402

dev = torch.device(args.device)
cuda = dev.type == "cuda"
m, (ids,), lf = gpt2(dev, args.tiny)


def sync() -> None:
    if cuda:
        torch.cuda.synchronize()


def plain() -> None:
    lf(m(ids)).backward()
    sync()
    m.zero_grad(set_to_none=True)


def traced() -> None:
    gradtrace.trace(m, ids, loss=lf)
    sync()


for _ in range(3):
    plain()
    traced()
tp, tt = [], []
for _ in range(5):
    t0 = time.perf_counter(); plain(); tp.append(time.perf_counter() - t0)  # noqa: E702
    t0 = time.perf_counter(); traced(); tt.append(time.perf_counter() - t0)  # noqa: E702
tp_, tt_ = sorted(tp)[2], sorted(tt)[2]
ops = sum(1 for n in gradtrace.trace(m, ids, loss=lf).nodes if n.kind == "op")
print(f"gradtrace from {Path(gradtrace.__file__).parent}")
print(f"plain {tp_ * 1e3:.1f} ms, traced {tt_ * 1e3:.1f} ms ({tt_ / tp_:.2f}x), {ops} op nodes (medians of 5)")

activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
keys = ("cudaLaunchKernel", "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
        "cudaMalloc", "cudaFree", "cudaHostAlloc", "aten::item", "aten::_local_scalar_dense", "aten::copy_", "aten::cat")
counts = {}
tables = ""
for name, f in (("plain", plain), ("traced", traced)):
    with profile(activities=activities) as prof:
        f()
    ka = prof.key_averages()
    c = {k: 0 for k in keys}
    launches = aten = 0
    for e in ka:
        if e.key in c:
            c[e.key] = e.count
        if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")):
            launches += e.count
        if e.key.startswith("aten::"):
            aten += e.count
    c["all kernel launches"] = launches
    c["all aten ops"] = aten
    counts[name] = c
    if name == "traced":
        tables = ka.table(sort_by="self_cpu_time_total", row_limit=30)
for k in counts["plain"]:
    print(f"{k:28s} plain {counts['plain'][k]:7d}   traced {counts['traced'][k]:7d}")
extra = counts["traced"]["all kernel launches"] - counts["plain"]["all kernel launches"]
print(f"extra kernel launches per op node: {extra / ops:.2f}")

pr = cProfile.Profile()
pr.enable()
traced()
pr.disable()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
print(s.getvalue())
print(tables)
