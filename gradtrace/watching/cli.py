"""``gradtrace watch`` and ``gradtrace check --every-step``: the command code (``gradtrace/cli.py`` registers it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import GradtraceError
from .history import watch_format_for

if TYPE_CHECKING:
    from .runner import Outcome

__all__ = ["check_every_step", "check_trace_output", "parse_steps", "parse_trace_steps", "run_watch", "watch_target"]


def parse_steps(value: str | None) -> tuple[int, int | None]:
    """``A:B`` (either side may be empty) as ``(A, B)``; None is ``(1, None)``.

    >>> parse_steps("100:200"), parse_steps("50:"), parse_steps(None)
    ((100, 200), (50, None), (1, None))
    """
    if value is None:
        return 1, None
    a, sep, b = value.partition(":")
    try:
        first = int(a) if a.strip() else 1
        last = int(b) if b.strip() else None
    except ValueError:
        raise click.BadParameter(f"{value!r} is not A:B with whole step numbers (e.g. 100:200, 100:, :500)") from None
    if not sep and last is None:
        last = first  # a single step N is N:N
    if first < 1 or (last is not None and last < first):
        raise click.BadParameter(f"{value!r}: steps count from 1 and A:B needs A <= B")
    return first, last


def parse_trace_steps(value: str | None) -> tuple[int, ...]:
    """``1,100,1000`` as ``(1, 100, 1000)``.

    >>> parse_trace_steps("1, 100,1000")
    (1, 100, 1000)
    """
    if not value:
        return ()
    try:
        steps = tuple(sorted({int(x) for x in value.split(",") if x.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of step numbers (e.g. 1,100,1000)") from None
    if any(s < 1 for s in steps):
        raise click.BadParameter(f"{value!r}: steps count from 1")
    return steps


def watch_target(output: str | None, fmt: str | None, script: str, default_fmt: str) -> tuple[Path, str, str]:
    """Where ``watch`` writes (``-``: standard output), in which format, and the name to show; checked before the run."""
    if output == "-":  # standard output: JSON unless --format says otherwise
        return Path("-"), fmt or "json", "standard output"
    if output is None:
        fmt = fmt or default_fmt
        shown = f"{Path(script).stem}.{fmt}"
    else:
        shown = output
        try:
            fmt = watch_format_for(Path(output), fmt)
        except GradtraceError as e:
            raise click.UsageError(str(e)) from None
        if not Path(output).parent.is_dir():
            raise click.ClickException(f"cannot write {output!r}: the folder {str(Path(output).parent)!r} does not exist")
    return Path(os.path.abspath(shown)), fmt, shown


def run_watch(script: str, script_args: tuple[str, ...], output: str | None, fmt: str | None, every: int | None,
              steps: tuple[int, int | None], trace_steps: tuple[int, ...], alarm_trace: bool) -> None:
    """``gradtrace watch``: run the script to its end under the watcher and write the history."""
    from .assemble import assemble_history
    from .engine import Watcher
    from .runner import run_watched

    target, fmt, shown = watch_target(output, fmt, script, "html")
    if fmt == "html":
        try:
            from ..render import watch_html  # noqa: F401  (checked before a long run, not after)
        except ImportError:
            raise click.ClickException("the watch page (gradtrace.render.watch_html) is not in this gradtrace: "
                                       "write -o RUN.json or -o RUN.csv") from None
    # No sentinel here: its per-step reductions would cost more than watch's budget. Every step's loss is kept
    # anyway, which finds a loss going non-finite at its exact step; gradients and outputs are checked on samples.
    watcher = Watcher(every=every, steps=steps, trace_steps=trace_steps, script=Path(script).name)

    def before_hard_exit(outcome: Outcome) -> None:
        # os._exit(N) in the script: the history is written now (the process ends right after, with the script's N).
        try:
            _write_history(script, script_args, watcher, outcome, target, fmt, shown, alarm_trace)
        except click.ClickException as e:
            e.show()
        except SystemExit:  # (the status passes through: os._exit ends the process with it next)
            pass

    try:
        outcome = run_watched(script, script_args, watcher, stdout_to_stderr=output == "-" or _is_stdout(output),
                              keep_alive=True, on_hard_exit=before_hard_exit)
    except GradtraceError as e:
        raise click.ClickException(str(e)) from None
    _write_history(script, script_args, watcher, outcome, target, fmt, shown, alarm_trace)


def _write_history(script: str, script_args: tuple[str, ...], watcher: Any, outcome: Outcome, target: Path, fmt: str,
                   shown: str, alarm_trace: bool) -> None:
    """After the run (or at the script's ``os._exit``): trace the first alarm, write the history, say so, pass the
    script's status through."""
    from .assemble import assemble_history

    if watcher.steps_run == 0 and not watcher.backward_calls:
        sys.stdout.flush()
        click.echo(outcome.report, err=True, nl=False)
        from .runner import no_step_hint

        raise click.ClickException(f"{Path(script).name} made no training step (no backward() and no optimizer step()): "
                                   "nothing to watch" + no_step_hint(outcome))
    traces: dict[int, dict[str, Any]] = dict(watcher.traces)
    extra: list[dict[str, Any]] = []
    alarms = [e for e in watcher.alarm_events() if e["kind"] == "alarm"]
    first = min(alarms, key=lambda e: e["step"]) if alarms else None
    call = watcher.call_to_trace(first["step"]) if first is not None else None
    from .._script_process import terminated_at

    if alarm_trace and first is not None and call is not None and first["step"] not in traces and terminated_at() is not None:
        # SIGTERM: the history is written now, within the time a SIGTERM leaves, not after a re-run of the script
        extra.append({"step": first["step"], "kind": "warning", "module": None, "param": None,
                      "text": "not traced: gradtrace got SIGTERM (the re-run that traces the first alarm was skipped)"})
    elif alarm_trace and first is not None and call is not None and first["step"] not in traces:
        from .replay import replay_step

        step = first["step"]
        click.echo(f"gradtrace: step {step} raised an alarm ({first['text']}); running {Path(script).name} again to "
                   f"trace it (backward() call {call})", err=True)
        try:
            replayed = replay_step(script, script_args, call, step, watcher.loss_fingerprints())
            traces[step] = replayed.trace.to_dict()
            if replayed.mismatch:
                extra.append({"step": step, "kind": "warning", "module": None, "param": None,
                              "text": f"the re-run that traced this step differed from the watched run ({replayed.mismatch}): "
                                      "the script is not deterministic, and the trace may not be of the same numbers"})
        except GradtraceError as e:
            extra.append({"step": step, "kind": "warning", "module": None, "param": None,
                          "text": f"could not trace this step: {e}"})
    ended = ended_early_event(outcome, Path(script).name, watcher.steps_run)
    if ended is not None:
        extra.append(ended)
    history = assemble_history(watcher, traces, extra_events=extra)
    try:
        if str(target) == "-":
            sys.stdout.write({"json": history.to_json, "csv": history.to_csv, "html": history.to_html}[fmt]())
            sys.stdout.flush()
        else:
            history.save(target, fmt)
    except (GradtraceError, OSError) as e:
        raise click.ClickException(f"cannot write {shown!r}: {e}") from None
    sampled = len(history.steps)
    alarm = history.first_alarm
    click.echo(f"gradtrace: wrote {shown} ({history.steps_run} steps, {sampled} sampled"
               + (f", first alarm at step {alarm}" if alarm is not None else ", no alarm") + ")", err=True)
    if outcome.status:
        sys.stdout.flush()
        click.echo(outcome.report, err=True, nl=False)
        raise SystemExit(outcome.status)


def ended_early_event(outcome: Outcome | None, name: str, steps_run: int, error: str | None = None) -> dict[str, Any] | None:
    """The warning event of a history whose script ended early (Ctrl-C, SIGTERM, an exception, a non-zero status; or
    ``error``, gradtrace's own reason on a rank), in the words the terminal and the rank records use; None otherwise.

    The history ends where the script did: said where the reader looks (the page's events, the JSON, each rank's
    history under torchrun), not only in the terminal that printed it.
    """
    if error is not None:
        how = f"ended ({error})"
    elif outcome is None or not (outcome.interrupted or outcome.status):
        return None
    elif outcome.interrupted:
        how = "was interrupted (Ctrl-C)"
    elif outcome.terminated:
        how = "was terminated (SIGTERM)"
    elif outcome.raised:
        lines = outcome.report.strip().splitlines()
        how = "raised an exception" + (f" ({lines[-1].strip()})" if lines else "")
    else:
        how = f"exited with status {outcome.status}"
    return {"step": steps_run, "kind": "warning", "module": None, "param": None,
            "text": f"{name} {how} after step {steps_run}: the history ends there"}


def check_trace_output(output: str | None) -> None:
    """``check --every-step -o OUTPUT``: a format gradtrace can write and a folder that exists, checked before the run."""
    if output is not None and output != "-":
        from ..render.output import format_for

        try:
            format_for(Path(output), None)
        except GradtraceError as e:
            raise click.UsageError(str(e)) from None
        if not Path(output).parent.is_dir():
            raise click.ClickException(f"cannot write {output!r}: the folder {str(Path(output).parent)!r} does not exist")


def check_every_step(script: str, script_args: tuple[str, ...], output: str | None, as_json: bool) -> None:
    """``gradtrace check --every-step``: the sentinel on every step; the full trace of the first broken one."""
    from ..cli import EXIT_ALARM, EXIT_HEALTHY, EXIT_NO_STEP, INTERRUPTED
    from .engine import Watcher
    from .replay import replay_step
    from .runner import run_watched

    check_trace_output(output)
    watcher = Watcher(sentinel=True, sample=False, script=Path(script).name)
    watcher.on_alarm = lambda alarm: setattr(watcher, "stop_requested", True)
    name = Path(script).name
    try:
        outcome = run_watched(script, script_args, watcher, stdout_to_stderr=True, keep_alive=True)
    except GradtraceError as e:
        click.echo(f"gradtrace check: {e}", err=True)
        raise SystemExit(EXIT_NO_STEP) from None
    alarm = watcher.alarm
    if alarm is None:
        sys.stdout.flush()
        click.echo(outcome.report, err=True, nl=False)
        if outcome.interrupted:
            raise SystemExit(INTERRUPTED)
        if outcome.status != 0 or watcher.steps_run == 0:
            from .runner import no_step_hint

            why = f"{name} exited with status {outcome.status}" if outcome.status else f"{name} made no training step"
            click.echo(f"gradtrace check: no broken step found, and the run did not finish ({why}) after "
                       f"{watcher.steps_run} steps" + (no_step_hint(outcome) if watcher.steps_run == 0 else ""), err=True)
            if outcome.raised and watcher.steps_run > 0:
                # (a script that stops itself on a NaN loss, before backward(): the sentinel never saw that step)
                click.echo(f"gradtrace check: {name} raised during step {watcher.steps_run + 1}, before that step's "
                           "optimizer step: the sentinel checks a step's loss and gradients at its backward() and step(), "
                           f"so step {watcher.steps_run + 1} was not checked. If the script stops itself on a non-finite "
                           "loss, let it reach backward() under check (or guard after it) to have the step traced", err=True)
            raise SystemExit(EXIT_NO_STEP)
        msg = f"gradtrace check: every step healthy ({watcher.steps_run} steps: loss, gradients and update ratio finite and sane)"
        click.echo(_json(script, None, [], EXIT_HEALTHY, watcher.steps_run) if as_json else msg)
        raise SystemExit(EXIT_HEALTHY)
    click.echo(f"gradtrace check: step {alarm.step} went wrong: {alarm.text}; running {name} again to trace that step "
               f"(backward() call {alarm.backward_call})", err=True)
    try:
        replayed = replay_step(script, script_args, alarm.backward_call, alarm.step, watcher.fingerprints)
    except GradtraceError as e:
        click.echo(f"gradtrace check: step {alarm.step}: {alarm.text}", err=False)
        click.echo(f"gradtrace check: could not trace step {alarm.step}: {e}", err=True)
        raise SystemExit(EXIT_ALARM) from None
    trace = replayed.trace
    findings = [f for f in trace.diagnose() if f.alarm]
    target = output if output is not None else f"{Path(script).stem}-step{alarm.step}.html"
    from ..render.options import RenderOptions
    from ..render.output import write

    try:
        write(trace, Path(os.path.abspath(target)) if target != "-" else Path("-"), None if target != "-" else "json",
              RenderOptions())
    except GradtraceError as e:
        raise click.ClickException(f"cannot write {target!r}: {e}") from None
    if replayed.mismatch:
        click.echo(f"gradtrace check: WARNING: the re-run differed from the first run ({replayed.mismatch}): {name} is not "
                   "deterministic, so the trace written may not hold the same numbers as the step that went wrong", err=True)
    if as_json:
        click.echo(_json(script, alarm, [_finding_row(trace, f) for f in findings], EXIT_ALARM, watcher.steps_run,
                         target, replayed.mismatch))
    else:
        from ..render.inert import printable

        click.echo(f"gradtrace check: step {alarm.step} is the first broken step: {alarm.text}")
        for f in findings[:5]:
            row = _finding_row(trace, f)
            where = ", ".join(x for x in (f"module {row['module']}" if row["module"] else "at the top level",
                                          row["source"] or "") if x)
            click.echo(printable(f"  {row['op']} ({where}): {f.message}"))
        click.echo(f"gradtrace check: wrote the full trace of step {alarm.step} to {target}", err=True)
    raise SystemExit(EXIT_ALARM)


def _finding_row(trace: Any, f: Any) -> dict[str, Any]:
    node = trace.node(f.node)
    return dict(f.to_dict(), op=node.label, module=node.module, source=node.source)


def _json(script: str, alarm: Any, findings: list[dict[str, Any]], status: int, steps_run: int, written: str | None = None,
          mismatch: str | None = None) -> str:
    import json

    return json.dumps({"script": Path(script).name, "exit_status": status, "steps_run": steps_run,
                       "first_bad_step": None if alarm is None else alarm.step,
                       "finding": None if alarm is None else alarm.text,
                       "backward_call": None if alarm is None else alarm.backward_call,
                       "findings": findings, "trace_file": written, "replay_mismatch": mismatch}, indent=1)


def _is_stdout(path: str | None) -> bool:
    from ..cli._common import _is_stdout as is_stdout

    return is_stdout(path)

