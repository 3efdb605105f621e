"""Under torchrun, the full trace of the step found broken: every rank re-run from the start, traced at that step.

The single-process design (:mod:`.replay`) re-runs the script in a fresh
Python; a rank of a DDP or FSDP script cannot run alone (its collectives wait
for the other ranks), so rank 0 of the first run starts a whole new group:
``python -m torch.distributed.run --standalone --nproc-per-node N -m
gradtrace.watching.rankreplay SPEC`` (a fresh rendezvous on a free port).
Each new rank runs the script seeded as in the first run, under the sentinel
(its fingerprints check the re-run against the first run, rank by rank), and
records the asked-for ``backward()`` call as ``render`` does under torchrun;
the traces are gathered to the new rank 0 (:func:`gradtrace.distributed.run.run_rank`),
which leaves the multi-rank trace in the folder the first run gave it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import GradtraceError
from .replay import Fingerprint, compare_fingerprints, run_unless_terminated

__all__ = ["RanksReplayed", "TORCHRUN_VARS", "replay_ranks", "rerun_env"]

#: What torchrun tells its workers: the re-run's own torchrun sets them afresh, none may leak from the first run.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                 "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                 "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                 "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "GRADTRACE_STATUS_FILE")


@dataclass
class RanksReplayed:
    multi: Any  # gradtrace.distributed.MultiTrace
    #: None when every rank's re-run matched its first run bit for bit up to the step; else what differed, by rank.
    mismatch: str | None


def rerun_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The re-run's environment: this one without what the first run's torchrun told its workers.

    >>> rerun_env({"PATH": "/bin", "MASTER_PORT": "29500", "RANK": "0"})
    {'PATH': '/bin'}
    """
    return {k: v for k, v in environ.items() if k not in TORCHRUN_VARS}


def replay_ranks(script: str, args: Sequence[str], world_size: int, backward_call: int, step: int,
                 first: dict[int, Sequence[Fingerprint]], timeout: float) -> RanksReplayed:
    """Run ``script`` again on ``world_size`` fresh local ranks and return every rank's trace of its
    ``backward_call``-th backward(), checked against the first run's fingerprints (by rank) up to ``step``."""
    from ..distributed.multitrace import MultiTrace

    with tempfile.TemporaryDirectory(prefix="gradtrace-rank-replay-") as tmp:
        spec = json.dumps({"script": os.path.abspath(script), "args": list(args), "backward_call": backward_call,
                           "dir": tmp, "timeout": timeout})
        env = rerun_env(os.environ)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
               "-m", "gradtrace.watching.rankreplay", spec]
        try:
            status, output = run_unless_terminated(cmd, env, f"re-running {os.path.basename(script)} on {world_size} "
                                                   f"ranks to trace step {step}")
        except OSError as e:
            raise GradtraceError(f"cannot start torch.distributed.run to re-run {os.path.basename(script)}: {e}") from None
        out = os.path.join(tmp, "multi.json")
        if not os.path.exists(out):
            errors = [open(os.path.join(tmp, f), encoding="utf-8").read() for f in sorted(os.listdir(tmp)) if f.startswith("error")]
            tail = output.decode("utf-8", "replace")[-4000:]
            raise GradtraceError(f"re-running {os.path.basename(script)} on {world_size} ranks to trace step {step} failed "
                                 f"(status {status})" + (": " + "; ".join(errors) if errors else "")
                                 + f"; its output ended with:\n{tail}")
        with open(out, encoding="utf-8") as f:
            multi = MultiTrace.from_json(f.read())
        again: dict[int, list[Any]] = {}
        for r in range(world_size):
            try:
                with open(os.path.join(tmp, f"fp{r}.json"), encoding="utf-8") as f:
                    again[r] = [tuple(x) for x in json.load(f)]
            except OSError:
                again[r] = []
    diffs = []
    for r in sorted(first):
        d = compare_fingerprints(first[r], again.get(r, []), step)
        if d is not None:
            diffs.append(f"rank {r}: {d}")
    return RanksReplayed(multi, "; ".join(diffs) or None)


def _rank_main(spec_text: str) -> None:
    """One rank of the re-run: the script under the sentinel, its ``backward_call`` recorded, the traces gathered."""
    from ..distributed.env import rank_info
    from ..distributed.run import report_ended, report_failure, run_rank
    from ..errors import ScriptError
    from ..script import ScriptFailed, run_script
    from .engine import Watcher
    from .runner import seed_everything

    spec = json.loads(spec_text)
    info = rank_info()
    if info is None:
        raise SystemExit("gradtrace.watching.rankreplay runs under torch.distributed.run only")
    folder, timeout = spec["dir"], float(spec["timeout"])
    watcher = Watcher(sentinel=True, sample=False, script=spec["script"])
    failed = False
    ended: list[str] = []  # this rank's script finished before the call (uneven step counts): not a failure

    def run(on_session: Any) -> Any:
        nonlocal failed
        why = None
        try:
            with watcher:
                seed_everything()
                return run_script(spec["script"], spec["args"], step=spec["backward_call"], on_session=on_session)
        except ScriptFailed as e:
            if e.trace is not None:
                return e.trace
            lines = e.report.strip().splitlines()
            why = f"the script failed before that step: {lines[-1] if lines else f'status {e.status}'}"
            raise
        except ScriptError as e:
            calls = watcher.backward_calls
            if calls < spec["backward_call"]:  # the script ran to its end before that call: the others may reach it
                ended.append(f"{os.path.basename(spec['script'])} finished after {calls} backward() call"
                             f"{'s' if calls != 1 else ''}, before call {spec['backward_call']}")
            else:
                why = str(e)
            raise
        except GradtraceError as e:
            why = str(e)
            raise
        finally:
            if why is not None:
                failed = True
                with open(os.path.join(folder, f"error{info.rank}.txt"), "w", encoding="utf-8") as f:
                    f.write(f"rank {info.rank}: {why}")
                report_failure(info, why, timeout)

    status = 0
    try:
        try:
            multi = run_rank(info, run, spec["backward_call"], timeout)
        except ScriptError:
            if not ended:
                raise
            multi = report_ended(info, ended[0], spec["backward_call"], timeout)
        if multi is not None:
            with open(os.path.join(folder, "multi.json"), "w", encoding="utf-8") as f:
                f.write(multi.to_json())
    except (GradtraceError, ScriptFailed) as e:
        status = 1
        if not failed:
            with open(os.path.join(folder, f"error{info.rank}.txt"), "w", encoding="utf-8") as f:
                f.write(f"rank {info.rank}: {e}")
    with open(os.path.join(folder, f"fp{info.rank}.json"), "w", encoding="utf-8") as f:
        json.dump([list(x) for x in watcher.fingerprints], f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # the script's threads, its process group and its atexit handlers are not this process's business


if __name__ == "__main__":
    _rank_main(sys.argv[1])
