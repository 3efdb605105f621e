"""`gradtrace check --every-step` and `gradtrace watch` on unmodified scripts, from the shell; torch is the oracle."""

from __future__ import annotations

import json
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradtrace import Trace
from gradtrace.watching import History

from .watch_schema import validate

ROOT = Path(__file__).parent.parent
SCRIPTS = Path(__file__).parent / "scripts" / "watch"
NAN = SCRIPTS / "nan_in_hundreds.py"


def gradtrace_cli(*args, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gradtrace", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def oracle_first_nan():
    """Train nan_in_hundreds.py's model with torch alone: the first step whose loss is NaN, and lin's output there."""
    ns = runpy.run_path(str(NAN), run_name="oracle")
    model, opt = ns["build"]()
    for step in range(1, 1001):
        opt.zero_grad()
        with torch.no_grad():
            z = model.head.lin(model.body(ns["batch"](step)))
        loss = ns["loss_of"](model, step)
        if not math.isfinite(loss.item()):
            return step, z
        loss.backward()
        opt.step()
    raise AssertionError("the script never turns NaN")


def test_check_every_step_names_the_step_the_op_its_module_and_line(tmp_path):
    k, z = oracle_first_nan()
    assert 100 <= k < 1000  # "a step in the hundreds"
    out = tmp_path / "first_bad.json"
    proc = gradtrace_cli("check", NAN, "--every-step", "-o", out, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"step {k} is the first broken step: loss is NaN" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("log "))
    assert "module head" in line and "nan_in_hundreds.py:" in line
    src_line = int(re.search(r"nan_in_hundreds\.py:(\d+)", line).group(1))
    assert "torch.log(" in NAN.read_text().splitlines()[src_line - 1]
    assert "WARNING" not in proc.stderr  # the re-run reproduced the first run bit for bit
    # The trace written is of step k: the input of log there equals torch's own, computed independently.
    trace = Trace.from_json(out.read_text())
    log = next(n for n in trace.nodes if n.label == "log")
    assert log.module == "head" and log.value.nan > 0
    lin = next(n for n in trace.nodes if n.module == "head.lin" and n.kind == "op" and n.label in ("addmm", "linear"))
    assert math.isclose(lin.value.min, z.min().item(), rel_tol=1e-6) and math.isclose(lin.value.max, z.max().item(), rel_tol=1e-6)
    assert z.min().item() <= 0  # (the step before would have had no non-positive input)


def test_check_every_step_json_and_default_file(tmp_path):
    k, _ = oracle_first_nan()
    proc = gradtrace_cli("check", NAN, "--every-step", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["first_bad_step"] == k and doc["exit_status"] == 1 and doc["replay_mismatch"] is None
    assert any(f["op"] == "log" and f["module"] == "head" for f in doc["findings"])
    assert (tmp_path / f"nan_in_hundreds-step{k}.html").is_file()


def test_check_every_step_warns_when_the_rerun_differs(tmp_path):
    proc = gradtrace_cli("check", NAN, "--every-step", "-o", tmp_path / "t.json", "--", "--noise", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "WARNING: the re-run differed from the first run" in proc.stderr and "not deterministic" in proc.stderr
    assert (tmp_path / "t.json").is_file()  # the trace is still shown, with the warning


def test_check_every_step_healthy_run_exits_0(tmp_path):
    proc = gradtrace_cli("check", SCRIPTS / "healthy.py", "--every-step", "--", "60", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "every step healthy (60 steps" in proc.stdout
    assert "final loss" in proc.stderr  # the script's own prints go to standard error


def test_check_every_step_exit_5_when_the_script_fails_first(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import torch\nw = torch.ones(2, requires_grad=True)\n(w * 2).sum().backward()\nraise ValueError('bad data')\n")
    proc = gradtrace_cli("check", script, "--every-step", cwd=tmp_path)
    assert proc.returncode == 5 and "ValueError: bad data" in proc.stderr
    proc = gradtrace_cli("check", script, "--every-step", "--step", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "--every-step" in proc.stderr


def test_watch_healthy_500_steps_json_csv_html(tmp_path):
    proc = gradtrace_cli("watch", SCRIPTS / "healthy.py", "-o", tmp_path / "run.json", "--every", "10", "--trace-steps", "1,250",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((tmp_path / "run.json").read_text())
    validate(d)
    # every 10th step, and the traced steps too
    assert d["steps_run"] == 500 and d["steps"] == sorted({*range(1, 501, 10), 250}) and d["first_alarm"] is None
    assert {"", "0", "2", "2.0", "3"} <= set(d["series"]["module"])  # per-module history, nested modules included
    assert all(x is not None for x in d["series"]["module"]["2.0"]["out_rms"])
    assert set(d["traces"]) == {"1", "250"}
    assert d["lr"]["opt0/group0"][0] == 0.01 and d["lr"]["opt0/group0"][-1] == 0.01 * 0.5 ** 4
    # torch: the loss of step 1 (the script seeds itself)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()),
                                torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    assert math.isclose(d["loss"][0], torch.nn.functional.cross_entropy(model(x), y).item(), rel_tol=1e-6)
    proc = gradtrace_cli("watch", SCRIPTS / "healthy.py", "-o", tmp_path / "run.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "run.csv").read_text().splitlines()
    assert rows[0] == "step,series,name,metric,value" and any(r.startswith("1,module,2.0,out_rms,") for r in rows)


def test_watch_html_page_smoke(tmp_path):
    """One smoke test of the page (its Chromium tests are the page's own, with its module)."""
    try:
        from gradtrace.render import watch_html  # noqa: F401
    except ImportError:
        proc = gradtrace_cli("watch", SCRIPTS / "healthy.py", "-o", tmp_path / "run.html", cwd=tmp_path)
        assert proc.returncode == 1 and "write -o RUN.json" in proc.stderr  # refused before the run, clearly
        pytest.skip("gradtrace.render.watch_html is not in this tree (the watchpage helper's module, joined at merge)")
    proc = gradtrace_cli("watch", SCRIPTS / "healthy.py", "-o", tmp_path / "run.html", "--every", "25", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_watch_real_world_loader_workers_accumulation_clipping_schedule(tmp_path):
    proc = gradtrace_cli("watch", SCRIPTS / "loader_accum_clip.py", "-o", tmp_path / "run.json", "--every", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((tmp_path / "run.json").read_text())
    validate(d)
    assert d["steps_run"] == 6  # 12 batches, 2 micro-steps each
    assert [round(x, 6) for x in d["lr"]["opt0/group0"]] == [round(0.5 / (1 + s), 6) for s in range(6)]
    assert all(b >= a for b, a in zip(d["clip"]["before"], d["clip"]["after"])) and max(d["clip"]["after"]) <= 0.1 + 1e-6
    # torch: step 1's loss is the mean of its two micro-steps' (each divided by 2, as the script does)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(96, 5), torch.randint(0, 2, (96,)))
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    (x0, y0), (x1, y1) = data[0:8], data[8:16]
    expected = (torch.nn.functional.cross_entropy(model(x0), y0) / 2 + torch.nn.functional.cross_entropy(model(x1), y1) / 2) / 2
    assert math.isclose(d["loss"][0], expected.item(), rel_tol=1e-6)


def test_watch_traces_the_first_alarm_even_between_samples(tmp_path):
    k, _ = oracle_first_nan()
    proc = gradtrace_cli("watch", NAN, "-o", tmp_path / "run.json", "--every", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    h = History(json.loads((tmp_path / "run.json").read_text()))
    assert h.first_alarm == k and h.steps_run == 1000
    assert k not in h.steps  # not a sampled step, yet traced
    trace = h.traces[k]
    assert next(n for n in trace.nodes if n.label == "log").value.nan > 0


def test_watch_passes_the_script_status_through_after_writing(tmp_path):
    script = tmp_path / "exits.py"
    script.write_text("import sys, torch\nw = torch.ones(2, requires_grad=True)\nopt = torch.optim.SGD([w], 0.1)\n"
                      "for _ in range(3):\n    opt.zero_grad(); (w * w).sum().backward(); opt.step()\nsys.exit(4)\n")
    proc = gradtrace_cli("watch", script, "-o", tmp_path / "run.json", "--every", "1", cwd=tmp_path)
    assert proc.returncode == 4
    d = json.loads((tmp_path / "run.json").read_text())
    assert d["steps_run"] == 3 and d["params"][0]["name"] == "opt0.group0.param0"
    assert [round(x, 6) for x in d["loss"]] == [2.0, round(2 * 0.8 ** 2, 6), round(2 * 0.64 ** 2, 6)]
    proc = gradtrace_cli("watch", script, "-o", tmp_path / "run.txt", cwd=tmp_path)
    assert proc.returncode == 2 and ".json" in proc.stderr


def test_watch_to_standard_output(tmp_path):
    proc = gradtrace_cli("watch", SCRIPTS / "healthy.py", "-o", "-", "--every", "5", "--", "12", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)  # only the history on stdout: the script's print went to stderr
    validate(d)
    assert d["steps"] == [1, 6, 11] and "final loss" in proc.stderr


def test_watch_and_every_step_under_torchrun_check_their_options_before_the_script_runs(tmp_path, monkeypatch):
    """Under torchrun (RANK and WORLD_SIZE set) watch and check --every-step run on every rank (the real runs are in
    test_distributed_watch_runs.py); a bad output or --nproc-per-node inside torchrun is refused before the script runs."""
    from click.testing import CliRunner

    from gradtrace.cli import main

    script = tmp_path / "s.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    for args, words in ((["watch", str(script), "-o", "run.txt"], "suffix"),
                        (["check", "--every-step", str(script), "-o", "bad.xyz"], "xyz"),
                        (["watch", "--nproc-per-node", "2", str(script)], "leave it out"),
                        (["check", "--every-step", "--nproc-per-node", "2", str(script)], "leave it out")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and words in r.output and "must not run" not in r.output, (args, r.output)


TERM_SCRIPT = """import os, sys, time, torch
w = torch.ones(2, requires_grad=True)
opt = torch.optim.SGD([w], 0.1)
for step in range(1, 1000):
    opt.zero_grad(); (w * w).sum().backward(); opt.step()
    if step == {stop}:
        open(sys.argv[1], "w").write("ready")
        time.sleep(120)  # killed here: SIGTERM from timeout, kill, Slurm, docker stop or torchrun
"""


def _run_until_sigterm(tmp_path, *args, stop):
    """Start ``gradtrace ARGS`` on a script that makes ``stop`` steps and waits; SIGTERM it there; its result."""
    import signal
    import time

    script = tmp_path / "term.py"
    script.write_text(TERM_SCRIPT.format(stop=stop))
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gradtrace", *map(str, args), script, "--", ready], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def test_watch_keeps_the_history_when_sigterm_ends_the_run(tmp_path):
    """SIGTERM (timeout, kill, Slurm, docker stop) ends a watch as Ctrl-C does: the history is written, then the process
    ends with 143 (128 + SIGTERM), as a shell reports a SIGTERM-ed one."""
    status, _, err = _run_until_sigterm(tmp_path, "watch", "-o", tmp_path / "run.json", "--every", "1", stop=20)
    assert status == 143, err
    d = json.loads((tmp_path / "run.json").read_text())
    validate(d)
    # torch, independently: the same 20 SGD steps on sum(w*w)
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], 0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert d["steps_run"] == 20 and d["steps"] == list(range(1, 21))
    assert d["loss"] == pytest.approx(losses, rel=1e-6)
    assert any(e["kind"] == "warning" and e["step"] == 20 and "term.py was terminated (SIGTERM) after step 20" in e["text"]
               for e in d["events"]), d["events"]
    assert "wrote" in err and "terminated (SIGTERM)" in err


def test_render_run_to_end_keeps_the_traced_step_when_sigterm_ends_the_run(tmp_path):
    """render --run-to-end: the step was recorded before SIGTERM; it is written, then the process ends with 143."""
    status, _, err = _run_until_sigterm(tmp_path, "render", "--step", "3", "--run-to-end", "-o", tmp_path / "s.json",
                                        stop=5)
    assert status == 143, err
    t = Trace.from_json((tmp_path / "s.json").read_text())
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], 0.1)
    for _ in range(3):
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        opt.step()
    assert t.node(t.loss).values[0].mean == pytest.approx(loss.item(), rel=1e-6)
    assert "term.py was terminated (SIGTERM) after the traced step" in err


SPAWN_SCRIPT = """import torch, torch.multiprocessing as mp

def train(rank):
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([w], 0.1)
    for _ in range(3):
        opt.zero_grad(); (w * w).sum().backward(); opt.step()

if __name__ == "__main__":
    mp.spawn(train, nprocs=2, join=True)
"""


def test_a_script_whose_training_ran_in_spawned_children_is_told_to_launch_with_torchrun(tmp_path):
    """The DDP tutorial's mp.spawn pattern: the steps ran in child processes gradtrace does not follow; watch and
    check --every-step say so and name torchrun / --nproc-per-node, instead of only "no training step"."""
    script = tmp_path / "spawned.py"
    script.write_text(SPAWN_SCRIPT)
    proc = gradtrace_cli("watch", script, "-o", tmp_path / "run.json", cwd=tmp_path)
    assert proc.returncode == 1 and "made no training step" in proc.stderr
    assert "started 2 child processes" in proc.stderr and "torchrun" in proc.stderr and "--nproc-per-node" in proc.stderr
    proc = gradtrace_cli("check", "--every-step", script, cwd=tmp_path)
    assert proc.returncode == 5 and "started 2 child processes" in proc.stderr and "torchrun" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "1e-300", "0", "-5"])
def test_a_rank_timeout_that_is_no_usable_number_of_seconds_is_a_usage_error_before_the_run(tmp_path, value):
    """--rank-timeout NaN passed click's range (every comparison with NaN is false) and inf / 1e-300 failed only in the
    store's timedelta after the whole training (exit 70, history lost): now exit 2 before the script runs."""
    script = tmp_path / "ran.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\n")
    for args in (["watch", "--rank-timeout", value, script], ["check", "--every-step", "--rank-timeout", value, script]):
        proc = gradtrace_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2 and "--rank-timeout" in proc.stderr and "number of seconds from 1" in proc.stderr, proc.stderr
        assert not (tmp_path / "ran").exists()


SLOW_REPLAY = """import os, sys, time, torch
first_run = not os.path.exists(sys.argv[1])
if not first_run:
    time.sleep(90)  # the re-run that would trace the alarm: as long as a long training
w = torch.ones(2, requires_grad=True)
opt = torch.optim.SGD([w], 0.1)
for step in range(1, 1000):
    opt.zero_grad()
    loss = (w * w).sum() * (float("nan") if step == 3 else 1.0)
    loss.backward(); opt.step()
    if step == 5:
        open(sys.argv[1], "w").write("ready")
        time.sleep(120)
"""


def test_sigterm_writes_the_history_without_first_re_running_the_script_to_trace_its_alarm(tmp_path):
    """After SIGTERM the history is written at once (torchrun, Slurm and docker give a few seconds before SIGKILL):
    the re-run that would trace the first alarm is skipped, and the history says so."""
    import signal
    import time

    script = tmp_path / "slow.py"
    script.write_text(SLOW_REPLAY)
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gradtrace", "watch", script, "-o", tmp_path / "run.json", "--every",
                             "1", "--", ready], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=150)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert took < 30, f"{took:.0f} s after SIGTERM: the alarm's re-run ran first"
    d = json.loads((tmp_path / "run.json").read_text())
    assert d["steps_run"] == 5 and d["first_alarm"] == 3
    w = torch.ones(2, requires_grad=True)  # torch: steps 1 and 2, then the NaN loss of step 3
    losses = [(w * w).sum().item(), ((0.8 * w) * (0.8 * w)).sum().item()]
    assert d["loss"][:2] == pytest.approx(losses, rel=1e-6) and d["loss"][2] == "NaN"
    assert any("not traced: gradtrace got SIGTERM" in e["text"] for e in d["events"]), d["events"]


def test_the_history_of_a_script_that_raised_says_it_raised_not_exited_with_status_1(tmp_path):
    script = tmp_path / "raises.py"
    script.write_text("import torch\nw = torch.ones(2, requires_grad=True)\nopt = torch.optim.SGD([w], 0.1)\n"
                      "for step in range(1, 9):\n    if step == 5:\n        raise RuntimeError('boom')\n"
                      "    opt.zero_grad(); (w * w).sum().backward(); opt.step()\n")
    proc = gradtrace_cli("watch", script, "-o", tmp_path / "run.json", "--every", "1", cwd=tmp_path)
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr
    d = json.loads((tmp_path / "run.json").read_text())
    assert d["steps_run"] == 4
    texts = [e["text"] for e in d["events"] if e["kind"] == "warning"]
    assert "raises.py raised an exception (RuntimeError: boom) after step 4: the history ends there" in texts, texts
