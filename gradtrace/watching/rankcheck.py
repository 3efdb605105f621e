"""``check --every-step`` under torchrun: the sentinel on every rank, one stop for all, the broken step traced on all.

1. Every rank runs the script under the sentinel; the ranks agree on the
   first broken step at the sentinel's reads (:mod:`.agree`) and all stop at
   the end of the same step.
2. Every rank posts an ``end`` record in the rendezvous store: how its script
   ended, its first broken step, its fingerprints. The ranks other than 0
   then exit: 0 when their script stopped or ended cleanly (torchrun waits for
   rank 0), their failure status otherwise, after rank 0 acknowledged it (a
   non-zero exit makes torchrun stop every rank, which frees a rank 0 stuck in
   a collective with a dead rank, but must not cut rank 0's report short).
3. Rank 0 takes the earliest broken step over all ranks, starts a fresh group
   of N ranks that re-runs the script and traces that step on every rank
   (:mod:`.rankreplay`: the multi-rank trace, with the cross-rank findings),
   writes it, prints the step, the rank, the op, its module and source line,
   and exits 1.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from .._script_process import terminated_at
from ..distributed.board import Board
from ..distributed.env import RankInfo
from ..distributed.gather import ACK_WAIT, RankFailure
from ..errors import GradtraceError
from .agree import RankAlarm, StepAgreement, alarm_from_dict, alarm_to_dict, earliest

__all__ = ["check_every_step_ranks"]


def _end_record(outcome: Any, error: str | None, watcher: Any, agreement: StepAgreement, name: str) -> dict[str, Any]:
    from .runner import why_ended

    local = agreement.local
    if local is None and watcher.alarm is not None:  # (found at the last read, after the last meeting)
        a = watcher.alarm
        local = RankAlarm(a.step, a.text, a.backward_call, a.optimizer, agreement.board.info.rank)
    failed = error is not None or (outcome is not None and not outcome.stopped and outcome.status != 0)
    why = error if error is not None else why_ended(outcome, name) if failed else None
    return {"status": outcome.status if outcome is not None else 1, "failed": failed, "why": why,
            "interrupted": bool(outcome is not None and outcome.interrupted), "steps_run": watcher.steps_run,
            "alarm": alarm_to_dict(local, agreement.board.info.rank), "fingerprints": [list(f) for f in watcher.fingerprints]}


def check_every_step_ranks(info: RankInfo, script: str, script_args: tuple[str, ...], output: str | None, as_json: bool,
                           timeout: float) -> None:
    """``gradtrace check --every-step`` on one rank of a torchrun run; ends the command with its exit status."""
    from ..cli import EXIT_ALARM, EXIT_HEALTHY, EXIT_NO_STEP, INTERRUPTED
    from .engine import Watcher
    from .runner import Outcome, run_watched

    name = Path(script).name
    board = Board(info, "check", timeout)
    agreement = StepAgreement(board)
    watcher = Watcher(sentinel=True, sample=False, script=name)
    watcher.sentinel.agree = agreement
    watcher.on_alarm = lambda alarm: setattr(watcher, "stop_requested", True)
    posted = False

    def post_end(outcome: Outcome | None, error: str | None) -> dict[str, Any]:
        nonlocal posted
        record = _end_record(outcome, error, watcher, agreement, name)
        if not posted:
            posted = True
            try:
                board.post("end", json.dumps(record))
            except (GradtraceError, RuntimeError, OSError) as e:
                click.echo(f"gradtrace: rank {info.rank}: cannot reach the other ranks: {e}", err=True)
        return record

    def on_hard_exit(outcome: Outcome) -> None:  # os._exit(N) in the script: tell the others, then the process ends
        post_end(outcome, None)
        if outcome.status != 0:
            board.wait("ack", [info.rank], ACK_WAIT, or_ended=False)

    error = None
    outcome = None
    try:
        outcome = run_watched(script, script_args, watcher, stdout_to_stderr=True, keep_alive=True, on_hard_exit=on_hard_exit)
    except RankFailure as e:
        error = str(e)
    except GradtraceError as e:
        error = f"rank {info.rank}: {e}"
    record = post_end(outcome, error)
    if outcome is not None and outcome.report and (record["failed"] or outcome.interrupted):
        sys.stdout.flush()
        click.echo(outcome.report, err=True, nl=False)
    if info.rank != 0:
        if record["failed"]:
            click.echo(f"gradtrace check: rank {info.rank} of {info.world_size} ended: {record['why']}", err=True)
            board.wait("ack", [info.rank], ACK_WAIT, or_ended=False)  # rank 0 names it before torchrun stops everyone
            raise SystemExit(record["status"] or 1)
        raise SystemExit(EXIT_HEALTHY)  # rank 0 speaks for the run; exiting frees this rank's memory for the re-run
    # Rank 0: every rank's end, the earliest broken step over all of them.
    ends_raw = board.wait("end", list(range(info.world_size)))
    ends: dict[int, dict[str, Any] | None] = {r: json.loads(v) if v is not None else None for r, v in ends_raw.items()}
    missing = [r for r, e in ends.items() if e is None]
    failed = {r: e["why"] for r, e in ends.items() if e is not None and e["failed"]}
    for r in failed:
        if r != 0:
            board.post("ack", "read", rank=r)
    if not missing:
        from ..distributed.launch import all_ranks_done

        all_ranks_done()
    first = earliest([alarm_from_dict(e["alarm"]) if e is not None else None for e in ends.values()])
    problems = [f"rank {r}: {why}" for r, why in sorted(failed.items())] + \
               [(f"rank {r} posted nothing before torchrun stopped the run (SIGTERM to rank 0): it was killed (SIGKILL, the "
                 "out-of-memory killer), crashed without a word, or hangs") if terminated_at() is not None else
                f"rank {r} did not end within {timeout:g} s (it crashed or hangs; --rank-timeout sets the wait)" for r in missing]
    if first is None:
        if any(e is not None and e["interrupted"] for e in ends.values()):
            raise SystemExit(INTERRUPTED)
        if problems or any(e["steps_run"] == 0 for e in ends.values() if e is not None):
            why = "; ".join(problems) or f"{name} made no training step"
            click.echo(f"gradtrace check: no broken step found, and the run did not finish on every rank ({why})", err=True)
            raise SystemExit(EXIT_NO_STEP)
        steps = max(e["steps_run"] for e in ends.values() if e is not None)
        msg = (f"gradtrace check: every step healthy on all {info.world_size} ranks ({steps} steps: loss, gradients and "
               "update ratio finite and sane)")
        click.echo(_json(name, info.world_size, None, [], [], EXIT_HEALTHY, steps, None, None) if as_json else msg)
        raise SystemExit(EXIT_HEALTHY)
    at = sorted((r, a) for r, e in ends.items() if e is not None for a in [alarm_from_dict(e["alarm"])]
                if a is not None and a.step == first.step)
    saying = "; ".join(f"rank {r}: {a.text}" for r, a in at)
    if _several_nodes(info) is None:  # (on several nodes nothing is re-run: _trace_and_report says so, and only that)
        click.echo(f"gradtrace check: step {first.step} went wrong ({saying}); running {name} again on {info.world_size} "
                   f"ranks to trace that step (backward() call {first.backward_call})", err=True)
    for problem in problems:
        click.echo(f"gradtrace check: also: {problem}", err=True)
    _free_memory()
    fingerprints = {r: [tuple(x) for x in e["fingerprints"]] for r, e in ends.items() if e is not None}
    steps_run = max(e["steps_run"] for e in ends.values() if e is not None)
    _trace_and_report(script, script_args, info, first, at, fingerprints, output, as_json, timeout, steps_run)
    raise SystemExit(EXIT_ALARM)


def _several_nodes(info: RankInfo) -> str | None:
    """This machine's rank count when the run spans several machines (the re-run could start only those),
    else ``None``."""
    local = os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size))
    return None if local == str(info.world_size) else local


def _free_memory() -> None:
    """What rank 0 can give back before the re-run: the script's collectable objects, PyTorch's cached GPU blocks."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # (freeing is best effort: the re-run works without it)
        pass


def _trace_and_report(script: str, script_args: tuple[str, ...], info: RankInfo, first: RankAlarm, at: list[Any],
                      fingerprints: dict[int, Any], output: str | None, as_json: bool, timeout: float, steps_run: int) -> None:
    from ..render.inert import printable
    from ..render.options import RenderOptions
    from ..render.output import format_for
    from ..distributed.output import write_multi
    from .rankreplay import replay_ranks

    name = Path(script).name
    step = first.step
    local = _several_nodes(info)
    if local is not None:  # several nodes: the re-run starts its ranks on this machine only
        # No rank is named: without the re-run's trace, which rank's NaN came first and which got it from a
        # collective is unknown (a rank whose gradients went NaN in the all-reduce alarms at the same step).
        if as_json:
            click.echo(_json(name, info.world_size, first, at, [], 1, steps_run, None, None))
        else:
            click.echo(f"gradtrace check: step {step} is the first broken step: "
                       + "; ".join(f"rank {r}: {a.text}" for r, a in at))
        click.echo(f"gradtrace check: not re-run to trace it: the run spans several nodes ({info.world_size} ranks, "
                   f"{local} here) and the re-run starts ranks on this machine only; trace it with the same torchrun "
                   f"command line and `-m gradtrace check --step {first.backward_call} {name}`", err=True)
        return
    try:
        replayed = replay_ranks(script, script_args, info.world_size, first.backward_call, step, fingerprints, timeout)
    except GradtraceError as e:
        click.echo(f"gradtrace check: step {step} is the first broken step, on rank {first.rank}: {first.text}")
        click.echo(f"gradtrace check: could not trace step {step}: {e}", err=True)
        return
    multi = replayed.multi
    target = output if output is not None else f"{Path(script).stem}-step{step}.html"
    path = Path(os.path.abspath(target)) if target != "-" else Path("-")
    try:
        write_multi(multi, path, format_for(path, None) if target != "-" else "json", RenderOptions())
    except GradtraceError as e:
        raise click.ClickException(f"cannot write {target!r}: {e}") from None
    for r, why in sorted(multi.ended.items()):  # (uneven step counts: the trace holds the ranks that reached the step)
        click.echo(f"gradtrace check: rank {r} ended before step {step} ({why}): the trace holds the other ranks", err=True)
    if replayed.mismatch:
        click.echo(f"gradtrace check: WARNING: the re-run differed from the first run ({replayed.mismatch}): {name} is "
                   "not deterministic, so the trace written may not hold the same numbers as the step that went wrong", err=True)
    rows = []
    for r, f in multi.findings():
        if not f.alarm:
            continue
        node = multi.trace(r).node(f.node)
        rows.append(dict(f.to_dict(), rank=r, op=node.label, module=node.module, source=node.source))
    # The cross-rank finding first: it names the rank and op where the NaN appeared before any collective spread it.
    rows.sort(key=lambda row: (row["kind"] != "nonfinite_origin_rank", row["rank"]))
    origin = next((row["rank"] for row in rows if row["kind"] == "nonfinite_origin_rank"), None)
    rank = origin if origin is not None else rows[0]["rank"] if rows else first.rank
    first = next((a for r, a in at if r == rank), first)  # (the origin rank's own words for the step)
    if as_json:
        click.echo(_json(name, info.world_size, first, at, rows, 1, steps_run, target, replayed.mismatch, rank,
                         multi.ended))
        return
    click.echo(f"gradtrace check: step {step} is the first broken step, on rank {rank}: "
               + "; ".join(f"rank {r}: {a.text}" for r, a in at))
    for row in rows[:6]:
        where = ", ".join(x for x in (f"module {row['module']}" if row["module"] else "at the top level", row["source"] or "") if x)
        click.echo(printable(f"  rank {row['rank']}: {row['op']} ({where}): {row['message']}"))
    held = f"{len(multi.ranks)} of {info.world_size}" if multi.ended else f"{info.world_size}"
    click.echo(f"gradtrace check: wrote the full trace of step {step} on {held} ranks to {target}", err=True)


def _json(name: str, world: int, first: RankAlarm | None, at: list[Any], findings: list[dict[str, Any]], status: int,
          steps_run: int | None, written: str | None, mismatch: str | None, rank: int | None = None,
          ended: dict[int, str] | None = None) -> str:
    return json.dumps({"script": name, "world_size": world, "exit_status": status, "steps_run": steps_run,
                       "ended_before": {str(r): why for r, why in sorted((ended or {}).items())},
                       "first_bad_step": None if first is None else first.step,
                       "rank": rank, "finding": None if first is None else first.text,
                       "alarms": [{"rank": r, "text": a.text, "backward_call": a.backward_call} for r, a in at],
                       "backward_call": None if first is None else first.backward_call,
                       "findings": findings, "trace_file": written, "replay_mismatch": mismatch}, indent=1)
