"""``gradtrace watch`` under torchrun: every rank records its history; rank 0 writes one file holding all ranks.

Each rank runs the script under its own :class:`~.engine.Watcher`, sampling
the same step numbers (:class:`RankWatcher`: the adaptive default times each
rank's own steps, so it would choose differently on each; under torchrun the
default is a rule of the step number alone). However a rank's script ends
(to its end, an exception, ``sys.exit``, Ctrl-C, ``os._exit``), it posts its
history and how it ended in the rendezvous store (:class:`~gradtrace.distributed.board.Board`),
never over the script's process group. Rank 0 waits for every rank's post (up
to ``--rank-timeout``), writes :class:`~.rankhistory.RankHistories` (a rank
that failed is in it with the steps it made; one that never posted is named
``missing``), and ends with the first non-zero status. A rank other than 0
whose script failed waits a few seconds for rank 0 to read its post before it
exits (its non-zero exit makes torchrun stop the whole group, which frees
ranks blocked in a collective with it); when rank 0 does not read it (it is
blocked there itself), the rank writes its own history beside the output,
``run.rank1.json``, so the steps before the failure are not lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .._script_process import terminated_at
from ..distributed.board import Board
from ..distributed.env import RankInfo
from ..distributed.gather import ACK_WAIT
from ..errors import GradtraceError
from .engine import MAX_EVERY, START_EVERY, THIN, Watcher

__all__ = ["EVERY_RULE", "RankWatcher", "run_watch_ranks"]

#: The default sampling under torchrun, a rule of the step number alone (the same steps on every rank).
EVERY_RULE = f"under torchrun: every {START_EVERY} steps, one step in 1 + step // {THIN} in a long run"
#: How long a rank 0 whose own script failed waits for the others (they may be blocked in a collective with it).
FAILED_WAIT = 3 * ACK_WAIT


class RankWatcher(Watcher):
    """A Watcher whose default sampling is the same on every rank: every START_EVERY steps, thinned as the adaptive
    default is (at most one step in ``1 + step // THIN``), with no timing in it."""

    def _plan(self, step: int) -> None:
        if self.every is not None:
            super()._plan(step)
            return
        self._period = min(MAX_EVERY, max(START_EVERY, 1 + step // THIN))
        self._next_sample = step + self._period


def run_watch_ranks(info: RankInfo, script: str, script_args: tuple[str, ...], target: Path, fmt: str, shown: str,
                    every: int | None, steps: tuple[int, int | None], trace_steps: tuple[int, ...], timeout: float) -> None:
    """``gradtrace watch`` on one rank of a torchrun run; ends the command with its exit status."""
    from .runner import Outcome, run_watched

    name = Path(script).name
    board = Board(info, "watch", timeout)
    watcher = RankWatcher(every=every, steps=steps, trace_steps=trace_steps, script=name)
    done: list[int] = []

    def finish(outcome: Outcome | None, error: str | None) -> int:
        if done:
            return done[0]
        done.append(_finish(info, board, watcher, outcome, error, target, fmt, shown, name, timeout))
        return done[0]

    def on_hard_exit(outcome: Outcome) -> None:  # os._exit(N) in the script: post, and write on rank 0, before it ends
        try:
            finish(outcome, None)
        except click.ClickException as e:
            e.show()

    outcome = None
    error = None
    try:
        outcome = run_watched(script, script_args, watcher, stdout_to_stderr=target == Path("-"), keep_alive=True,
                              on_hard_exit=on_hard_exit)
    except GradtraceError as e:
        error = f"rank {info.rank}: {e}"
    raise SystemExit(finish(outcome, error))


def _history_json(watcher: Watcher, outcome: Any, name: str = "", error: str | None = None) -> str | None:
    from .assemble import assemble_history
    from .cli import ended_early_event

    if watcher.steps_run == 0 and not watcher.backward_calls:
        return None
    ended = ended_early_event(outcome, name, watcher.steps_run, error)  # (each rank's page says where its history ends)
    data = assemble_history(watcher, dict(watcher.traces), extra_events=[ended] if ended else None).to_dict()
    if watcher.every is None:
        data["every_rule"] = EVERY_RULE
    return json.dumps(data, allow_nan=False)


def _finish(info: RankInfo, board: Board, watcher: Watcher, outcome: Any, error: str | None, target: Path, fmt: str,
            shown: str, name: str, timeout: float) -> int:
    """Post this rank's history; on rank 0, gather and write every rank's. Returns this rank's exit status."""
    from .runner import why_ended

    status = 1 if outcome is None else outcome.status
    failed = error is not None or status != 0
    why = error if error is not None else why_ended(outcome, name) if failed else None
    if outcome is not None and outcome.report:
        sys.stdout.flush()
        click.echo(outcome.report, err=True, nl=False)
    payload = _history_json(watcher, outcome, name, error)
    if payload is None and not failed:
        failed, why, status = True, f"{name} made no training step (no backward() and no optimizer step())", 1
    try:
        if payload is not None:
            board.post("history", payload)
        board.post("end", json.dumps({"status": status, "failed": failed, "why": why, "steps_run": watcher.steps_run}))
    except (GradtraceError, RuntimeError, OSError) as e:
        click.echo(f"gradtrace watch: rank {info.rank}: cannot reach the other ranks: {e}", err=True)
        return status or 1
    if info.rank != 0:
        if not failed:
            return 0  # rank 0 speaks for the run
        click.echo(f"gradtrace watch: rank {info.rank} of {info.world_size} ended: {why}", err=True)
        if board.wait("ack", [info.rank], ACK_WAIT, or_ended=False)[info.rank] is None and payload is not None:
            _write_own(info, payload, target, fmt)
        return status or 1
    return _gather_and_write(info, board, status, failed, why, target, fmt, shown, name, timeout)


def _write_own(info: RankInfo, payload: str, target: Path, fmt: str) -> None:
    """Rank 0 did not read this failed rank's history (it is blocked, or gone): keep it beside the output."""
    from ..distributed.output import rank_path
    from .history import History

    if str(target) == "-":
        return
    own = rank_path(target, info.rank)
    try:
        History(json.loads(payload)).save(own, fmt)
    except (GradtraceError, OSError) as e:
        click.echo(f"gradtrace watch: rank {info.rank}: cannot write its own history to {str(own)!r}: {e}", err=True)
        return
    click.echo(f"gradtrace watch: rank 0 did not collect rank {info.rank}'s history; rank {info.rank} wrote its own "
               f"to {own}", err=True)


def _gather_and_write(info: RankInfo, board: Board, status: int, failed: bool, why: str | None, target: Path, fmt: str,
                      shown: str, name: str, timeout: float) -> int:
    from .rankhistory import RankHistories

    others = list(range(1, info.world_size))
    ends = board.wait("end", others, min(timeout, FAILED_WAIT) if failed else timeout)
    ranks: list[dict[str, Any]] = []
    own = board.read("history", 0)
    ranks.append({"rank": 0, "status": "failed" if failed else "ok", "why": why, "history": json.loads(own) if own else None})
    worst = status
    for r in others:
        end = json.loads(ends[r]) if ends[r] is not None else None
        if end is None:
            if terminated_at() is not None:  # torchrun is stopping the run: a peer died (SIGKILL, the OOM killer) or hangs
                why = (f"rank {r} posted nothing before torchrun stopped the run (SIGTERM to rank 0): it was killed "
                       "(SIGKILL, the out-of-memory killer), crashed without a word, or hangs")
            else:
                why = (f"rank {r} posted nothing within {min(timeout, FAILED_WAIT) if failed else timeout:g} s (it crashed, "
                       "hangs, or waits in a collective for a rank that failed; --rank-timeout sets the wait)")
            ranks.append({"rank": r, "status": "missing", "history": None, "why": why})
            worst = worst or 1
            continue
        text = board.read("history", r)
        ranks.append({"rank": r, "status": "failed" if end["failed"] else "ok", "why": end["why"],
                      "history": json.loads(text) if text else None})
        if end["failed"]:
            board.post("ack", "read", rank=r)
            worst = worst or int(end["status"]) or 1
    if all(e is not None for e in ends.values()):
        from ..distributed.launch import all_ranks_done

        all_ranks_done()
    for r in ranks:
        if r["status"] != "ok":
            click.echo(f"gradtrace watch: rank {r['rank']}: {r['why']}", err=True)
    if not any(r["history"] is not None for r in ranks):
        click.echo(f"Error: no rank made a training step of {name}: nothing to watch", err=True)
        return worst or 1
    rule = next((r["history"]["every_rule"] for r in ranks if r["history"] is not None), "")
    doc = RankHistories.build(name, info.world_size, ranks, rule)
    try:
        if str(target) == "-":
            sys.stdout.write({"json": doc.to_json, "csv": doc.to_csv, "html": doc.to_html}[fmt]())
            sys.stdout.flush()
        else:
            doc.save(target, fmt)
    except (GradtraceError, OSError) as e:
        click.echo(f"Error: cannot write {shown!r}: {e}", err=True)
        return worst or 1
    alarm = doc.first_alarm
    steps = max((r["history"]["steps_run"] for r in ranks if r["history"] is not None), default=0)
    ok = sum(r["status"] == "ok" for r in ranks)
    click.echo(f"gradtrace: wrote {shown} ({info.world_size} ranks, {ok} ran to their end; {steps} steps"
               + (f", first alarm at step {alarm}" if alarm is not None else ", no alarm") + ")", err=True)
    return worst
