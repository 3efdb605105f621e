"""`gradtrace render`: an unmodified script, from the shell."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import gradtrace
from gradtrace.cli import main
from gradtrace.recorder.stats import stats_of

from .oracle import same

SCRIPTS = Path(__file__).parent / "scripts"
LOOP = str(SCRIPTS / "course_loop.py")


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def load_loop_module():
    spec = importlib.util.spec_from_file_location("course_loop_plain", LOOP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("step", [1, 3])
def test_course_loop_step_and_stop(tmp_path, step):
    out = tmp_path / "step.json"
    result = run("render", LOOP, "-o", out, "--step", step)
    assert result.exit_code == 0, result.output
    # The script ran up to the traced step's optimizer step and no further.
    assert [ln for ln in result.output.splitlines() if ln.startswith("done batch")] == [f"done batch {i}" for i in range(1, step)]
    assert "finished all epochs" not in result.output
    t = gradtrace.Trace.from_json(out.read_text())
    assert t.optimizer.name == "SGD" and t.optimizer.lr == 0.001
    assert ("momentum", "0.9") in t.optimizer.hyperparameters

    # The same steps in plain torch: the loss of step N and the update it made.
    mod = load_loop_module()
    net, loss_fn, optimizer, loader = mod.build()
    for i, (inputs, targets) in enumerate(loader, start=1):
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        optimizer.zero_grad()
        loss = loss_fn(net(inputs), targets)
        loss.backward()
        optimizer.step()
        if i == step:
            break
    assert t.node(t.loss).value.values == (loss.item(),)
    for name, p in net.named_parameters():
        (key,) = t.find(name)
        node = t.node(key)
        assert same(node.update, stats_of(p.detach() - before[name])), name
        assert same(node.grad, stats_of(p.grad)), name


def test_run_to_end(tmp_path):
    out = tmp_path / "s.dot"
    result = run("render", SCRIPTS / "two_backwards.py", "-o", out, "--run-to-end", "--step", 2)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("digraph")


def test_script_sees_python_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("render", SCRIPTS / "uses_sibling.py", "-o", "w.json", "a", "b", "--", "--lr", "0.1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "argv ['a', 'b', '--lr', '0.1']" in lines
    assert "name __main__" in lines
    assert f"cwd {tmp_path}" in lines
    assert f"path0 {SCRIPTS}" in lines
    t = gradtrace.Trace.from_json((tmp_path / "w.json").read_text())
    (w,) = [n for n in t.nodes if n.kind == "leaf"]
    assert w.label == "w" and w.grad.values == (3.0, 3.0)
    assert sys.argv[0] != str(SCRIPTS / "uses_sibling.py"), "sys.argv is restored"


def test_default_output_and_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("render", SCRIPTS / "two_backwards.py", "--format", "dot")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "two_backwards.dot").exists()
    result = run("render", SCRIPTS / "two_backwards.py", "--format", "text")
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split()[:4] == ["step", "node", "module", "shape"]
    assert "sum (loss)" in result.output
    assert list(tmp_path.iterdir()) == [tmp_path / "two_backwards.dot"]


@pytest.mark.dot
def test_default_svg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("render", LOOP, "--rankdir", "LR", "--no-values")
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "course_loop.svg").read_text()
    assert "<svg" in svg and "SGD.step()" in svg


def test_missing_script_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["render", str(tmp_path / "nope.py")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["render", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output


def test_script_error_shows_its_own_traceback():
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "raises_early.py"), "-o", "x.json"])
    assert result.exit_code == 1
    err = result.stderr
    assert "Traceback (most recent call last)" in err
    assert 'raises_early.py", line 5, in prepare' in err and "ValueError: bad data in the user's script" in err
    assert os.path.dirname(gradtrace.__file__) not in err and "runpy" not in err, err
    assert not Path("x.json").exists()


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("no_backward.py", [], "no_backward.py finished after 0 backward() calls; --step 1 asked for call 1"),
        ("no_backward.py", ["--", "--exit"], "no_backward.py finished after 0 backward() calls; --step 1 asked for call 1"),
        ("two_backwards.py", ["--step", "5"], "two_backwards.py finished after 2 backward() calls; --step 5 asked for call 5"),
    ],
)
def test_script_ending_early(script, args, message, tmp_path):
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / script), "-o", str(tmp_path / "o.json"), *args])
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "o.json").exists()


def test_missing_dot(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "two_backwards.py"), "-o", str(tmp_path / "o.svg")])
    assert result.exit_code == 1 and "apt-get install graphviz" in result.output
    assert not (tmp_path / "o.svg").exists()
    for fmt in ("dot", "json", "text", "html"):
        result = CliRunner().invoke(main, ["render", str(SCRIPTS / "two_backwards.py"), "--format", fmt, "-o", str(tmp_path / f"o.{fmt}")])
        assert result.exit_code == 0, result.output


def test_bad_output_path(tmp_path):
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "two_backwards.py"), "-o", str(tmp_path / "no" / "o.json")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "two_backwards.py"), "-o", "/proc/o.json"])
    assert result.exit_code == 1 and "cannot write" in result.output
    result = CliRunner().invoke(main, ["render", str(SCRIPTS / "two_backwards.py"), "-o", str(tmp_path / "o.png"), "--format", "json"])
    assert result.exit_code == 2 and "does not match" in result.output
    assert list(tmp_path.iterdir()) == []


def test_version_and_help():
    assert run("--version").output.strip() == f"gradtrace, version {gradtrace.__version__}"
    help_text = run("render", "--help").output
    for flag in ("--step", "--run-to-end", "--rankdir", "--no-values", "--no-grads", "--format", "Examples:"):
        assert flag in help_text
    assert "gradtrace render train.py" in run("--help").output


def test_installed_console_script(tmp_path):
    exe = shutil.which("gradtrace")
    assert exe, "the gradtrace console script is installed (pip install -e .)"
    out = tmp_path / "loop.json"
    proc = subprocess.run([exe, "render", LOOP, "-o", str(out), "--step", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "done batch 1" in proc.stdout and "done batch 2" not in proc.stdout
    assert json.loads(out.read_text())["optimizer"]["name"] == "SGD"
    proc = subprocess.run([exe, "render", str(SCRIPTS / "raises_early.py")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "ValueError: bad data" in proc.stderr and os.path.dirname(gradtrace.__file__) not in proc.stderr
    proc = subprocess.run([exe, "render", "missing.py"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    proc = subprocess.run([sys.executable, "-m", "gradtrace", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and gradtrace.__version__ in proc.stdout


def test_scale_options(tmp_path):
    out = tmp_path / "d.dot"
    result = run("render", LOOP, "-o", out, "--depth", 0)
    assert result.exit_code == 0, result.output
    src = out.read_text()
    assert re.search(r'^\s*"?module_fc1"? \[', src, re.M) and re.search(r'^\s*"?module_fc2"? \[', src, re.M)
    result = run("render", LOOP, "-o", out, "--module", "fc2")
    assert result.exit_code == 0 and "module fc2 only" in out.read_text()
    result = CliRunner().invoke(main, ["render", LOOP, "-o", str(out), "--module", "nope"])
    assert result.exit_code == 1 and "no module 'nope'" in result.output
    result = CliRunner().invoke(main, ["render", LOOP, "-o", str(out), "--max-nodes", "0"])
    assert result.exit_code == 2
    result = run("render", LOOP, "-o", out, "--max-nodes", 5, "--no-fold")
    assert result.exit_code == 0 and "--max-nodes 5" in out.read_text()  # the CLI names its own option
    

def test_docs_list_checks_own_exit_codes():
    """docs/cli.md gives check's exit codes exactly as `gradtrace check --help` does, not render's."""
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    section = docs.split("## Exit status of `gradtrace check`", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    help_text = CliRunner().invoke(main, ["check", "--help"]).output
    listed = {int(m) for m in re.findall(r"^\s+(\d+)\s+\S", help_text.split("Exit status:", 1)[1].split("Examples:", 1)[0], flags=re.M)}
    assert documented == listed == {0, 1, 2, 3, 5, 70, 130, 143}
    assert "except that 1 also means" not in docs
