"""The full trace of a step found broken: the script run again from its start, in a fresh process, traced at that step.

Why a re-run and not a snapshot: a training loop's body cannot be executed
again from outside it (the batch, the closure over the loss, the data
iterator's state all live in the user's frames), so "record what a replay
needs" would mean copying the model, the optimizer state and the RNG states
every step *and* still not having a way to run the step again. A fresh run
with the same seeds (see :func:`gradtrace.watching.runner.seed_everything`)
reaches the same step with nothing copied during the first run; its cost is
paid once, and only when something went wrong. ``benchmarks/watch_bench.py``
measures what a per-step snapshot of the parameters and optimizer state
would have cost instead.

The re-run is verified: the sentinel runs in it too, and its fingerprints
(the loss and the total gradient norm of every step up to the broken one,
bit for bit) must equal those of the first run. When they differ the script
is not deterministic (unseeded data order from the OS, nondeterministic
kernels, wall-clock dependent code) and the trace comes with that warning.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import GradtraceError
from ..steptrace import Trace

__all__ = ["Replayed", "compare_fingerprints", "replay_step"]

Fingerprint = tuple[int, str, float, "float | None"]  # (step, optimizer, loss, total gradient norm or None)


@dataclass
class Replayed:
    trace: Trace
    #: None when the re-run matched the first run bit for bit up to the step; else what differed.
    mismatch: str | None
    fingerprints: list[Fingerprint]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x) if not math.isnan(x) else b"nan"


def compare_fingerprints(first: Sequence[Fingerprint], again: Sequence[Fingerprint], upto: int) -> str | None:
    """What differs between two runs' fingerprints of steps 1..``upto`` (None: identical, bit for bit).

    Step ``upto`` itself is compared where the re-run reached its optimizer step: a re-run that traced an earlier
    micro-step of it (accumulation: the micro-step whose loss was first non-finite) stops before that step ends.

    >>> compare_fingerprints([(1, "opt0", 2.0, 1.0), (2, "opt0", 1.5, 0.5)], [(1, "opt0", 2.0, 1.0)], 2) is None
    True
    """
    a = {(s, o): (loss, gn) for s, o, loss, gn in first if s <= upto}
    b = {(s, o): (loss, gn) for s, o, loss, gn in again if s <= upto}
    missing = sorted(k for k in set(a) - set(b) if k[0] < upto)
    if missing:
        return f"the re-run did not reach step {missing[0][0]} of {missing[0][1]} the way the first run did"
    for key in sorted(set(a) & set(b)):
        (l1, g1), (l2, g2) = a[key], b[key]
        if _bits(l1) != _bits(l2):
            return f"step {key[0]}: loss {l1!r} in the first run, {l2!r} in the re-run"
        if g1 is not None and g2 is not None and _bits(g1) != _bits(g2):
            return f"step {key[0]}: total gradient norm {g1!r} in the first run, {g2!r} in the re-run"
    return None


def replay_step(script: str, args: Sequence[str], backward_call: int, step: int, first: Sequence[Fingerprint]) -> Replayed:
    """Run ``script`` again in a fresh Python and return the trace of its ``backward_call``-th backward(), checked
    against the first run's fingerprints up to ``step``."""
    with tempfile.TemporaryDirectory(prefix="gradtrace-replay-") as tmp:
        out = os.path.join(tmp, "replay.json")
        spec = json.dumps({"script": os.path.abspath(script), "args": list(args), "backward_call": backward_call, "out": out})
        status, output = run_unless_terminated(
            [sys.executable, "-c", "from gradtrace.watching.replay import _child; _child()", spec], None,
            f"re-running {os.path.basename(script)} to trace step {step}")
        if not os.path.exists(out):
            tail = output.decode("utf-8", "replace")[-4000:]
            raise GradtraceError(f"re-running {os.path.basename(script)} to trace step {step} failed (status "
                                 f"{status}); its output ended with:\n{tail}")
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
    if result.get("error"):
        raise GradtraceError(f"re-running {os.path.basename(script)} to trace step {step}: {result['error']}")
    again = [tuple(x) for x in result["fingerprints"]]
    mismatch = compare_fingerprints(first, again, step)  # type: ignore[arg-type]
    return Replayed(Trace.from_json(json.dumps(result["trace"])), mismatch, again)  # type: ignore[arg-type]


def run_unless_terminated(cmd: list[str], env: dict[str, str] | None, what: str) -> tuple[int, bytes]:
    """Run ``cmd`` (stdin closed, stdout and stderr together) to its end: its status and output. When this process
    got SIGTERM (see :func:`gradtrace._script_process.catch_sigterm`), before or meanwhile, the re-run is stopped
    and a GradtraceError says so: what was recorded is written now, within the time a SIGTERM leaves, not after a
    re-run as long as the training."""
    from .._script_process import terminated_at

    if terminated_at() is not None:
        raise GradtraceError(f"{what}: not done, gradtrace got SIGTERM first")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while True:
        try:
            output, _ = proc.communicate(timeout=0.2)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            if terminated_at() is None:
                continue
        proc.terminate()  # (torchrun passes it on to its ranks)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise GradtraceError(f"{what}: stopped, gradtrace got SIGTERM")


def _child() -> None:
    """The re-run's process: the script under the sentinel and a capture session of one backward()."""
    spec = json.loads(sys.argv[1])
    from ..script import ScriptFailed, run_script
    from .engine import Watcher
    from .runner import seed_everything

    watcher = Watcher(sentinel=True, sample=False, script=spec["script"])
    result: dict[str, Any] = {"error": None}
    trace = None
    try:
        with watcher:
            seed_everything()
            try:
                trace = run_script(spec["script"], spec["args"], step=spec["backward_call"])
            except ScriptFailed as e:
                trace = e.trace
                if trace is None:
                    result["error"] = f"the script failed before that step:\n{e.report}"
    except GradtraceError as e:
        result["error"] = str(e)
    result["fingerprints"] = [list(f) for f in watcher.fingerprints]
    if trace is not None:
        result["trace"] = json.loads(trace.to_json())
    elif result["error"] is None:
        result["error"] = "the step was not recorded"
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # the script's threads and atexit handlers are not this process's business
