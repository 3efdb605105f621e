"""The script runner leaves the user's run as Python would: GC state, exit status, shutdown time, threads, child processes.

Behaviour that belongs to the real process (exit codes, hangs, shutdown time,
atexit) is tested in a subprocess, `python -m gradtrace`, with a timeout.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import gradtrace
from gradtrace.cli import INTERNAL_ERROR, main
from gradtrace.recorder.stats import stats_of

from .oracle import same

SCRIPTS = Path(__file__).parent / "scripts"
ENV = dict(os.environ, PYTHONPATH=str(Path(gradtrace.__file__).parent.parent))


def gradtrace_cmd(*args: object, timeout: float = 120, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradtrace", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or ENV)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# -- the cyclic garbage collector ------------------------------------------------------------------


@pytest.fixture
def gc_restored():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("args", [["--run-to-end"], ["--step", "2", "--run-to-end"], ["--step", "3"]])
def test_gc_as_the_script_had_it_after_the_step(tmp_path, gc_restored, args):
    gc.enable()
    result = invoke("render", SCRIPTS / "gc_state.py", "-o", tmp_path / "g.json", *args)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("after")]
    assert lines and all(ln.endswith("gc True") for ln in lines), lines
    if "--run-to-end" in args:
        assert lines[-1] == "after step 4 gc True"
    assert gc.isenabled() and isinstance(gc.isenabled, types.BuiltinFunctionType), "the interpreter's own gc functions are back"


def test_gc_the_script_turned_off_stays_off(tmp_path, gc_restored):
    gc.enable()
    real_isenabled = gc.isenabled
    result = invoke("render", SCRIPTS / "gc_state.py", "-o", tmp_path / "g.json", "--run-to-end", "--", "--gc-off")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("after")]
    assert len(lines) == 8 and all(ln.endswith("gc False") for ln in lines), lines
    assert gc.isenabled is real_isenabled and not gc.isenabled(), "the script's gc.disable() is the process's state"


def _capture_loop(steps: int = 4) -> tuple[list[bool], gradtrace.Trace, torch.Tensor]:
    real_isenabled = gc.isenabled  # the interpreter's own, not what a paused session shows the user
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    seen = []
    with gradtrace.capture() as cap:
        for _ in range(steps):
            opt.zero_grad()
            (w * w).sum().backward()
            opt.step()
            seen.append(real_isenabled())
    return seen, cap.trace, w


def test_long_capture_block_resumes_gc_after_the_step(gc_restored):
    gc.enable()
    seen, trace, w = _capture_loop()
    assert seen == [True] * 4
    assert gc.isenabled()
    # The recording itself is unchanged: the step's gradient is torch's (2w at w's first value).
    (leaf,) = [n for n in trace.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(2 * torch.tensor([1.0, -2.0, 3.0])))


def test_long_capture_block_keeps_a_disabled_gc_disabled(gc_restored):
    gc.disable()
    seen, _, _ = _capture_loop()
    assert seen == [False] * 4 and not gc.isenabled()


# -- exit codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when,code,status,message",
    [
        ("before", "3", 3, "exits.py exited with status 3 before its first backward()"),
        ("before", "bad config", 1, "bad config\ngradtrace: exits.py exited with status 1 before its first backward()"),
        ("before", "none", 1, "exits.py finished after 0 backward() calls; --step 1 asked for call 1"),
        ("before", "0", 1, "exits.py finished after 0 backward() calls; --step 1 asked for call 1"),
        ("after", "4", 4, "exits.py exited with status 4 after the traced step"),
        ("after", "0", 0, None),
        ("after", "none", 0, None),
    ],
)
def test_the_scripts_exit_status_passes_through(tmp_path, when, code, status, message):
    out = tmp_path / "e.json"
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "exits.py"), "-o", str(out), "--", when, code])
    assert result.exit_code == status, result.output
    if message is not None:
        assert message in result.output
    # The file exists exactly when the step was recorded; a failing exit after it is reported after writing it.
    assert out.exists() == (when == "after")
    if when == "after":
        t = gradtrace.Trace.from_json(out.read_text())
        (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
        assert t.node(t.loss).label == "sum" and same(leaf.grad, stats_of(torch.full((2,), 2.0)))


def test_exit_status_of_a_later_step(tmp_path):
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "exits.py"), "-o", str(tmp_path / "e.json"), "--step", "2", "--", "after", "5"])
    assert result.exit_code == 5
    assert "exits.py exited with status 5 after 1 backward() call; --step 2 asked for call 2" in result.output


def test_exit_status_in_the_real_process(tmp_path):
    proc = gradtrace_cmd("render", SCRIPTS / "exits.py", "-o", tmp_path / "e.json", "--", "before", "3", timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "exits.py exited with status 3 before its first backward()" in proc.stderr
    proc = gradtrace_cmd("render", SCRIPTS / "exits.py", "-o", tmp_path / "e.json", "--run-to-end", "--", "after", "7", timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.index("wrote") < proc.stderr.index("exited with status 7")
    assert (tmp_path / "e.json").exists()


def test_a_script_raising_after_its_step_still_gets_its_diagram(tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "raises_after_backward.py"), "-o", str(out)])
    assert result.exit_code == 1
    err = result.stderr
    assert err.index("gradtrace: wrote") < err.index("Traceback (most recent call last)")
    assert "RuntimeError: the user's script broke after its backward()" in err
    assert os.path.dirname(gradtrace.__file__) not in err
    t = gradtrace.Trace.from_json(out.read_text())
    w = torch.tensor([1.0, -2.0])
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(2 * w))


def test_internal_error_is_not_the_scripts(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug inside gradtrace")

    import gradtrace.render.output

    monkeypatch.setattr(gradtrace.render.output, "write_counted", broken)  # what the render command writes with
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "two_backwards.py"), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == INTERNAL_ERROR == 70
    assert "gradtrace internal error" in result.stderr
    assert "ZeroDivisionError: a bug inside gradtrace" in result.stderr and "Traceback" in result.stderr
    # A script's own error stays exit 1, a refused step (GradtraceError) stays exit 1 with its message.
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "raises_early.py"), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 1 and "internal error" not in result.output


def test_a_bug_in_gradtraces_hooks_during_the_script_is_an_internal_error(tmp_path, monkeypatch):
    from gradtrace.recorder import session

    # Break gradtrace's own optimizer hook from inside: it then fails in session.py's frame, mid-script.
    monkeypatch.setattr(session, "_OPTIMIZER_SETTINGS", None)
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "course_loop.py"), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == INTERNAL_ERROR, result.output
    assert "gradtrace internal error" in result.stderr
    assert "session.py" in result.stderr and "TypeError" in result.stderr  # gradtrace's own frames are shown


def test_the_users_error_inside_a_recorded_op_stays_the_users(tmp_path):
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "shape_mismatch.py"), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 1 and "internal error" not in result.stderr
    assert 'shape_mismatch.py", line 7, in <module>' in result.stderr and "RuntimeError" in result.stderr
    assert os.path.dirname(gradtrace.__file__) not in result.stderr


def test_render_help_lists_exit_codes():
    help_text = invoke("render", "--help").output
    assert "Exit status:" in help_text
    for line in ("0    the file was written", "N    the script's own non-zero status", "1    gradtrace could not",
                 "2    usage error", "70   internal error"):
        assert line in help_text, line
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    for code in ("0", "N", "1", "2", "70"):
        assert f"\n| {code} | " in docs, f"docs/cli.md lists exit status {code}"


def test_missing_dot_is_reported_before_the_script_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    loop = SCRIPTS / "course_loop.py"
    for fmt in ("svg", "png", "pdf"):
        result = CliRunner().invoke(main, ["render", str(loop), "-o", str(tmp_path / f"o.{fmt}"), "--step", "3"])
        assert result.exit_code == 1 and "apt-get install graphviz" in result.output
        assert "done batch" not in result.output, "the script ran before the missing `dot` was reported"
    result = CliRunner().invoke(main, ["render", str(loop), "-o", str(tmp_path / "o.json"), "--step", "3"])
    assert result.exit_code == 0 and "done batch 2" in result.output  # formats without Graphviz run the script
    assert list(tmp_path.iterdir()) == [tmp_path / "o.json"]


# -- the process after the script ----------------------------------------------------------------


def test_non_daemon_thread_of_a_stopped_script_does_not_hang(tmp_path):
    out = tmp_path / "l.json"
    start = time.monotonic()
    proc = gradtrace_cmd("render", SCRIPTS / "lingering_thread.py", "-o", out, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "training done" not in proc.stdout
    assert "not waiting for the script's thread 'prefetcher'" in proc.stderr
    assert time.monotonic() - start < 60
    # Run to its end, the script stops its thread itself: nothing to say, nothing skipped.
    proc = gradtrace_cmd("render", SCRIPTS / "lingering_thread.py", "-o", out, "--run-to-end", timeout=90)
    assert proc.returncode == 0 and "training done" in proc.stdout and "not waiting" not in proc.stderr


def test_persistent_dataloader_workers_shut_down_like_a_plain_run(tmp_path):
    script = SCRIPTS / "dataloader_workers.py"
    start = time.monotonic()
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV)
    plain_s = time.monotonic() - start
    assert plain.returncode == 0, plain.stderr
    start = time.monotonic()
    proc = gradtrace_cmd("render", script, "-o", tmp_path / "d.json", timeout=120)
    traced_s = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    # Before the fix each of the 2 workers stalled 5 s (10 s more than the plain run); the bound is generous
    # for a loaded 2-core machine.
    assert traced_s < plain_s + 4.0, (traced_s, plain_s)
    assert proc.stderr.splitlines() == [f"gradtrace: wrote {tmp_path / 'd.json'} (6 nodes, step 1)"], proc.stderr


def test_training_in_child_processes_is_named_and_left_alone(tmp_path):
    proc = gradtrace_cmd("render", SCRIPTS / "hogwild.py", "-o", tmp_path / "h.json", timeout=120)
    assert proc.returncode == 1
    assert "hogwild.py finished after 0 backward() calls" in proc.stderr
    assert "The script started 2 child processes" in proc.stderr and "traces the process it runs in" in proc.stderr
    # The forked trainers inherit no hooks: gradtrace neither records in them nor stops them.
    assert proc.stdout.count("child trained") == 2 and "exit codes [0, 0]" in proc.stdout, proc.stdout + proc.stderr
    assert "_StopScript" not in proc.stderr


def test_dataloader_workers_are_not_child_processes_of_the_training(tmp_path):
    result = invoke("render", SCRIPTS / "no_backward.py", "-o", tmp_path / "n.json")
    assert "child process" not in result.output
    proc = gradtrace_cmd("render", SCRIPTS / "dataloader_workers.py", "-o", tmp_path / "d.json", "--step", "99", timeout=120)
    assert proc.returncode == 1 and "finished after 16 backward() calls" in proc.stderr and "child process" not in proc.stderr


def test_process_state_is_put_back_for_gradtraces_own_code(tmp_path):
    """cwd, stdout, warnings filters and signal handlers as before; the script's atexit handler still runs at exit."""
    work = tmp_path / "work"
    elsewhere = tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    marker = elsewhere / "marker.txt"  # the script chdirs to elsewhere/
    driver = textwrap.dedent(f"""
        import os, signal, sys, warnings
        import torch  # its import-time warnings filters are in place before the script runs, as under gradtrace
        from gradtrace.script import run_script
        before = (os.getcwd(), sys.stdout, sys.stderr, list(warnings.filters), signal.getsignal(signal.SIGTERM), sys.argv[:], sys.path[0], sys.modules["__main__"])
        t = run_script({str(SCRIPTS / 'process_state.py')!r}, step=1)
        after = (os.getcwd(), sys.stdout, sys.stderr, list(warnings.filters), signal.getsignal(signal.SIGTERM), sys.argv[:], sys.path[0], sys.modules["__main__"])
        for name, b, a in zip(["cwd", "stdout", "stderr", "warnings", "SIGTERM", "argv", "path0", "main"], before, after):
            print(name, "same" if a == b else f"changed: {{b!r}} -> {{a!r}}")
        warnings.warn("gradtrace's own warning, not an error")
        print("steps", t.node(t.loss).label)
    """)
    env = dict(ENV, GRADTRACE_TEST_MARKER=str(marker))
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120, cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "FROM THE SCRIPT" in proc.stdout  # the script's own stdout replacement did its work
    for name in ("cwd", "stdout", "stderr", "warnings", "SIGTERM", "argv", "path0", "main"):
        assert f"{name} same" in proc.stdout, proc.stdout
    assert "steps sum" in proc.stdout
    assert marker.read_text() == "atexit ran\n", "the script's atexit handler runs when the process exits"

    # From the shell: a relative -o lands where gradtrace was run, not where the script moved to.
    marker.unlink()
    proc = gradtrace_cmd("render", SCRIPTS / "process_state.py", "-o", "p.json", cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (work / "p.json").exists() and not (elsewhere / "p.json").exists()
    assert marker.read_text() == "atexit ran\n"


# -- gradtrace's own stdout, Ctrl-C, threads, forks, os._exit ------------------------------------


def _assert_the_sgd_step(t: gradtrace.Trace) -> None:
    """The step of the scripts above: loss = (w * x).sum(), then SGD with lr 0.1; torch computes the same step."""
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    x = torch.tensor([0.5, 4.0, -1.5])
    (w * x).sum().backward()
    before = w.detach().clone()
    torch.optim.SGD([w], lr=0.1).step()
    (leaf,) = [n for n in t.nodes if n.kind == "leaf"]
    assert same(leaf.grad, stats_of(w.grad)), leaf.grad
    assert leaf.update is not None and same(leaf.update, stats_of(w.detach() - before)), "the optimizer step is in the trace"
    assert t.optimizer is not None and t.optimizer.name == "SGD"


SCRIPT_PRINTS = ["loading data...", "epoch 0 (sys.__stdout__)", "epoch 0 (fd 1)", "after the step", "atexit: bye"]


@pytest.mark.parametrize("args, parse", [
    (["check", "--json"], "json"),
    (["check"], "verdict"),
    (["render", "-o", "-", "--format", "json"], "trace"),
    (["render", "--format", "text"], "table"),
])
def test_the_scripts_prints_go_to_stderr_when_gradtrace_writes_stdout(tmp_path, args, parse):
    proc = gradtrace_cmd(args[0], SCRIPTS / "printing.py", *args[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in SCRIPT_PRINTS[:3]:
        assert line not in proc.stdout and line in proc.stderr, (line, proc.stdout)
    if parse == "json":
        assert json.loads(proc.stdout)["exit_status"] == 0
    elif parse == "trace":
        _assert_the_sgd_step(gradtrace.Trace.from_json(proc.stdout))
    elif parse == "verdict":
        assert proc.stdout == "gradtrace check: no alarms or warnings in step 1 (3 nodes)\n"
    else:
        assert proc.stdout.startswith("step ") and "mul" in proc.stdout and "sum (loss)" in proc.stdout
    for line in SCRIPT_PRINTS[3:]:  # "after the step" never runs; the atexit handler does, on stderr
        assert line not in proc.stdout


def test_the_scripts_prints_go_to_stderr_when_the_output_file_is_stdout(tmp_path):
    """-o /dev/stdout is standard output too (here redirected to a file, as `> step.json` does)."""
    out = tmp_path / "stdout.json"
    with out.open("w") as stdout:
        proc = subprocess.run([sys.executable, "-m", "gradtrace", "render", str(SCRIPTS / "printing.py"), "-o", "/dev/stdout",
                               "--format", "json"], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert all(line in proc.stderr for line in SCRIPT_PRINTS[:3]), proc.stderr
    _assert_the_sgd_step(gradtrace.Trace.from_json(out.read_text()))


def test_the_scripts_prints_stay_on_stdout_when_gradtrace_writes_a_file(tmp_path):
    proc = gradtrace_cmd("render", SCRIPTS / "printing.py", "-o", tmp_path / "p.json", "--run-to-end")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == SCRIPT_PRINTS  # as `python printing.py` prints them, in order
    _assert_the_sgd_step(gradtrace.Trace.from_json((tmp_path / "p.json").read_text()))
    # Run to its end with gradtrace's output on stdout: the script's later prints and its atexit print go to stderr.
    proc = gradtrace_cmd("render", SCRIPTS / "printing.py", "-o", "-", "--format", "json", "--run-to-end")
    assert proc.returncode == 0, proc.stderr
    _assert_the_sgd_step(gradtrace.Trace.from_json(proc.stdout))
    assert all(line in proc.stderr for line in SCRIPT_PRINTS)


def _interrupt(tmp_path: Path, command: str, options: list[object], when: str) -> subprocess.CompletedProcess:
    """Run gradtrace ``command`` on interrupted.py and send it SIGINT (Ctrl-C) once the script waits."""
    marker = tmp_path / f"waiting-{command}-{when}"
    args = [command, SCRIPTS / "interrupted.py", *options, "--", marker, when]
    proc = subprocess.Popen([sys.executable, "-m", "gradtrace", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_after_the_step_writes_the_file_then_exits_130(tmp_path):
    out = tmp_path / "i.json"
    proc = _interrupt(tmp_path, "render", ["-o", out, "--run-to-end"], "after")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.index("gradtrace: wrote") < proc.stderr.index("KeyboardInterrupt"), proc.stderr
    assert "Aborted!" not in proc.stderr and os.path.dirname(gradtrace.__file__) not in proc.stderr
    _assert_the_sgd_step(gradtrace.Trace.from_json(out.read_text()))


def test_ctrl_c_after_the_step_checks_it_then_exits_130(tmp_path):
    proc = _interrupt(tmp_path, "check", ["--json"], "no-optimizer")
    assert proc.returncode == 130, proc.stderr
    assert json.loads(proc.stdout)["exit_status"] == 0 and "KeyboardInterrupt" in proc.stderr, proc.stdout + proc.stderr


def test_ctrl_c_before_the_step_exits_130_not_a_finding(tmp_path):
    out = tmp_path / "i.json"
    proc = _interrupt(tmp_path, "render", ["-o", out], "before")
    assert proc.returncode == 130 and not out.exists() and "KeyboardInterrupt" in proc.stderr, proc.stderr
    proc = _interrupt(tmp_path, "check", ["--json"], "before")
    assert proc.returncode == 130 and proc.stdout == "" and "KeyboardInterrupt" in proc.stderr, proc.stderr  # not 1 (NaN)


def test_keyboard_interrupt_raised_by_the_script_is_130_for_check(tmp_path):
    proc = gradtrace_cmd("check", SCRIPTS / "interrupted.py", tmp_path / "m", "raise")
    assert proc.returncode == 130, proc.stderr
    assert "Aborted!" not in proc.stderr and proc.stderr.rstrip().endswith("KeyboardInterrupt")


def test_a_step_in_a_worker_thread_is_recorded_in_full_without_a_stray_traceback(tmp_path):
    out = tmp_path / "t.json"
    proc = gradtrace_cmd("render", SCRIPTS / "thread_step.py", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "_StopScript" not in proc.stderr, proc.stderr
    assert "worker done" in proc.stdout  # the worker was not stopped inside its step()
    _assert_the_sgd_step(gradtrace.Trace.from_json(out.read_text()))
    # The main thread is stopped at its next backward(), as a script training in its main thread would be.
    proc = gradtrace_cmd("render", SCRIPTS / "thread_step.py", "-o", out, "--", "again")
    assert proc.returncode == 0, proc.stderr
    assert "main thread went on" not in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    _assert_the_sgd_step(gradtrace.Trace.from_json(out.read_text()))


def test_training_in_a_bare_fork_is_named(tmp_path):
    proc = gradtrace_cmd("render", SCRIPTS / "fork_backward.py", "-o", tmp_path / "f.json")
    assert proc.returncode == 1
    assert "finished after 0 backward() calls" in proc.stderr and "The script started 1 child process:" in proc.stderr, proc.stderr


def test_os_exit_after_the_step_writes_the_file_first(tmp_path):
    out = tmp_path / "x.json"
    proc = gradtrace_cmd("render", SCRIPTS / "hard_exit.py", "-o", out, "--run-to-end")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "stepped\n"
    assert proc.stderr.index("gradtrace: wrote") < proc.stderr.index("os._exit(7)"), proc.stderr
    _assert_the_sgd_step(gradtrace.Trace.from_json(out.read_text()))
    proc = gradtrace_cmd("render", SCRIPTS / "hard_exit.py", "-o", "-", "--format", "json", "--run-to-end")
    assert proc.returncode == 7 and "stepped" in proc.stderr, proc.stderr
    _assert_the_sgd_step(gradtrace.Trace.from_json(proc.stdout))
