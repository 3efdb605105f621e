"""Writing output: through devices and FIFOs, along symlinks, keeping modes, to stdout; paths
resolved where gradtrace was run; CLI options refused by range; what the CLI says it wrote."""

from __future__ import annotations

import math
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import gradtrace
from gradtrace import GradtraceError, RenderOptions
from gradtrace.cli import main
from gradtrace.render.output import write_bytes

from .models import MLP


@pytest.fixture(scope="module")
def trace():
    torch.manual_seed(0)
    return gradtrace.trace(MLP(3, 4, 2), torch.randn(2, 3))


@pytest.fixture
def null_device(tmp_path):
    """A character device like /dev/null. As root, a fresh one made in tmp_path: if writing ever
    replaces devices again, the test fails without breaking the machine's own /dev/null (running
    these tests against the unfixed code turned /dev/null into a regular file). Else /dev/null,
    which a user who is not root cannot replace."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    path = tmp_path / "null"
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def test_a_fifo_is_written_through_not_replaced(tmp_path, trace):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    trace.render(fifo)
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO is still a FIFO"
    assert gradtrace.Trace.from_json(got[0]).to_json() == trace.to_json()


def test_a_character_device_stays_a_device(trace, null_device):
    before = os.stat(null_device)
    trace.render(null_device, "json")
    after = os.stat(null_device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_mode == before.st_mode


def test_a_symlink_stays_a_link_and_its_target_is_written(tmp_path, trace):
    real = tmp_path / "real" / "t.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    trace.render(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert gradtrace.Trace.from_json(real.read_text()).to_json() == trace.to_json()
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["t.json"], "no temporary file left beside the target"


def test_a_dangling_symlink_creates_its_target(tmp_path, trace):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "made.txt")
    trace.render(link)
    assert link.is_symlink() and (tmp_path / "made.txt").read_text().startswith("step")


def test_a_private_file_keeps_its_mode(tmp_path, trace):
    path = tmp_path / "secret.json"
    path.write_text("")
    os.chmod(path, 0o600)
    trace.render(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("{")


def test_a_new_file_gets_the_umask_mode(tmp_path, trace):
    old = os.umask(0o027)
    try:
        trace.render(tmp_path / "new.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o640


def test_a_directory_is_refused(tmp_path, trace):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(GradtraceError, match="directory"):
        trace.render(tmp_path / "d.json")


def test_dash_is_standard_output_and_binary_safe(tmp_path, trace):
    code = textwrap.dedent(f"""
        import gradtrace
        t = gradtrace.Trace.from_json(open({str(tmp_path / 't.json')!r}).read())
        t.render("-", "png")
    """)
    trace.render(tmp_path / "t.json")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120)
    assert out.stdout.startswith(b"\x89PNG\r\n\x1a\n") and out.stdout.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(GradtraceError, match="needs a format"):
        trace.render("-")


def test_write_bytes_through_dev_null_as_raw_bytes(null_device):
    write_bytes(null_device, b"\x00\xff")
    assert stat.S_ISCHR(os.stat(null_device).st_mode)


# -- the CLI ------------------------------------------------------------------------------------

CHDIR_SCRIPT = """
import os, sys, torch
os.makedirs(sys.argv[1], exist_ok=True)
os.chdir(sys.argv[1])
w = torch.tensor([1.0, 2.0], requires_grad=True)
(w * w).sum().backward()
"""


@pytest.mark.parametrize("explicit", [True, False])
def test_output_path_is_resolved_before_the_script_chdirs(tmp_path, monkeypatch, explicit):
    script = tmp_path / "wanders.py"
    script.write_text(CHDIR_SCRIPT)
    monkeypatch.chdir(tmp_path)
    args = ["render", script, *(["-o", "out.json"] if explicit else ["--format", "json"]), "--", str(tmp_path / "elsewhere")]
    result = run(*args)
    assert result.exit_code == 0, result.output
    name = "out.json" if explicit else "wanders.json"
    assert (tmp_path / name).exists(), list(tmp_path.rglob("*"))
    assert not (tmp_path / "elsewhere" / name).exists()


def test_cli_writes_to_stdout(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(CHDIR_SCRIPT)
    result = CliRunner().invoke(main, ["render", str(script), "-o", "-", "--format", "json", "--", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    t = gradtrace.Trace.from_json(result.stdout)
    assert t.node(t.loss).label == "sum"


def test_cli_writes_through_dev_null(tmp_path, null_device):
    script = tmp_path / "s.py"
    script.write_text(CHDIR_SCRIPT)
    result = run("render", script, "-o", null_device, "--format", "dot", "--", str(tmp_path / "x"))
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(null_device).st_mode)


@pytest.mark.parametrize("value,ok", [("inf", True), ("1e300", False), ("nan", False), ("0", False), ("-3", False),
                                      ("1000000", True), ("1e6", True), ("1000001", False)])
def test_timeout_is_accepted_or_refused_by_range(tmp_path, value, ok):
    script = tmp_path / "s.py"
    script.write_text(CHDIR_SCRIPT)
    result = CliRunner().invoke(main, ["render", str(script), "--timeout", value, "-o", str(tmp_path / "o.dot"),
                                       "--", str(tmp_path / "x")])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit)
        assert "--timeout" in result.output and "0<x<=1000000" in result.output, result.output


def test_library_timeout_range():
    assert RenderOptions(timeout=float("inf")).timeout is None
    for bad in (1e300, float("nan"), 0, True, "5"):
        with pytest.raises(GradtraceError, match="timeout"):
            RenderOptions(timeout=bad)


def test_unknown_suffix_names_the_cli_option(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(CHDIR_SCRIPT)
    result = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2 and "--format" in result.output and "format=" not in result.output
    with pytest.raises(GradtraceError, match="pass format="):
        gradtrace.trace(lambda w: (w * w).sum(), torch.ones(2, requires_grad=True)).render(tmp_path / "x.jpg")


def test_wrote_message_counts_trace_and_drawing(tmp_path):
    script = tmp_path / "deep.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        net = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(6)])
        net(torch.randn(2, 4)).sum().backward()
    """))
    result = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / "d.dot"), "--depth", "0"])
    assert result.exit_code == 0, result.output
    t = gradtrace.Trace.from_json(CliRunner().invoke(main, ["render", str(script), "-o", "-", "--format", "json"]).stdout)
    drawn = t.to_dot(depth=0).source.count("shape=box3d")
    assert f"({len(t.nodes)} nodes drawn as " in result.stderr
    import re

    shown = int(re.search(r"drawn as (\d+)", result.stderr).group(1))
    loose = len([n for n in t.nodes if not n.module])
    assert shown == drawn + loose and shown < len(t.nodes)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_keeps_its_owner_when_root_rewrites_it(tmp_path, trace):
    path = tmp_path / "theirs.json"
    path.write_text("")
    os.chown(path, 1234, 1234)
    trace.render(path)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 1234) and path.read_text().startswith("{")


PIPE_SCRIPT = textwrap.dedent("""
    import torch
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    (torch.tanh(w) * 3).sum().backward()
""")


def _oracle_grad() -> list[float]:
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    (torch.tanh(w) * 3).sum().backward()
    return w.grad.tolist()


@pytest.mark.parametrize("target", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
@pytest.mark.parametrize("fmt", [None, "json", "svg"])
def test_cli_writes_through_dev_stdout_into_a_pipe(tmp_path, target, fmt):
    """``-o /dev/stdout | wc -c``: stdout is a pipe, whose realpath (``pipe:[n]``) is no file to
    put a temporary file beside; the given path is written straight through. Without --format a
    suffix-less output is svg, as --help says."""
    if fmt == "svg" or fmt is None:
        pytest.importorskip("graphviz")
    script = tmp_path / "s.py"
    script.write_text(PIPE_SCRIPT)
    args = [sys.executable, "-m", "gradtrace", "render", str(script), "-o", target] + (["--format", fmt] if fmt else [])
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"
    if fmt == "json":
        t = gradtrace.Trace.from_json(proc.stdout)
        w = next(n for n in t.nodes if n.kind == "leaf" or n.kind == "param")
        assert w.grad.values == pytest.approx(_oracle_grad(), rel=1e-6)  # torch is the oracle
    else:
        assert proc.stdout.lstrip().startswith(b"<?xml") and proc.stdout.rstrip().endswith(b"</svg>")
        import xml.etree.ElementTree as ET

        ET.fromstring(proc.stdout)


def test_library_writes_through_dev_stdout_into_a_pipe(tmp_path):
    code = textwrap.dedent("""
        import torch, gradtrace
        w = torch.tensor([0.5, -1.0], requires_grad=True)
        t = gradtrace.trace(lambda w: (torch.tanh(w) * 3).sum(), w)
        t.render("/dev/stdout", "json")
    """)
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    t = gradtrace.Trace.from_json(proc.stdout)
    assert t.node(t.loss).value.values == pytest.approx([3 * (math.tanh(0.5) + math.tanh(-1.0))], rel=1e-6)


def test_a_suffixless_output_is_svg(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(PIPE_SCRIPT)
    result = run("render", script, "-o", tmp_path / "diagram")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "diagram").read_bytes().lstrip().startswith(b"<?xml")


SEQ_SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Sequential(nn.Linear(4, 2), nn.Tanh()))
    net(torch.randn(2, 3)).sum().backward()
""")


@pytest.mark.parametrize("fmt,args,said", [
    ("text", ["--depth", "0"], "--depth applies only to the diagram formats"),
    ("html", ["--module", "1"], "--module applies only to the diagram formats (svg, png, pdf, dot): the HTML page"),
    ("html", ["--depth", "1", "--no-fold"], "--depth, --no-fold apply only"),
    ("json", ["--module", "0", "--depth", "0"], "a JSON file always holds the whole trace"),
    ("dot", ["--module", "0", "--depth", "0"], None),
    ("text", ["--module", "0"], None),
])
def test_options_a_format_does_not_use_are_named(tmp_path, fmt, args, said):
    script = tmp_path / "s.py"
    script.write_text(SEQ_SCRIPT)
    result = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / f"out.{fmt}"), "--format", fmt, *args])
    assert result.exit_code == 0, result.output
    if said is None:
        assert "applies only" not in result.stderr and "apply only" not in result.stderr
    else:
        assert said in result.stderr, result.stderr


def test_text_with_a_module_prints_only_its_rows(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SEQ_SCRIPT)
    result = CliRunner().invoke(main, ["render", str(script), "--format", "text", "--module", "1", "--no-grads"])
    assert result.exit_code == 0, result.output
    whole = CliRunner().invoke(main, ["render", str(script), "--format", "json", "-o", "-"])
    t = gradtrace.Trace.from_json(whole.stdout)
    inside = [n for n in t.nodes if n.module == "1" or n.module.startswith("1.")]
    lines = result.stdout.splitlines()
    assert lines[0] == f"module 1 only: {len(inside)} of {len(t.nodes)} nodes"
    assert len([x for x in lines[2:] if x and not x.startswith("note:")]) == len(inside)
    # torch as the oracle for what the rows show: the module's output is tanh of the second linear.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()),
                              torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()))
    out = net(torch.randn(2, 3))
    tanh = next(n for n in inside if n.label == "tanh")
    assert tanh.value.mean == pytest.approx(out.mean().item(), rel=1e-5)


def test_cli_messages_name_options_not_python_arguments(tmp_path, monkeypatch):
    """A layout timeout told CLI users to set ``timeout=...``; the CLI has --timeout. Every message
    and diagram note the library writes names the CLI's options under the CLI, Python's in Python."""
    import subprocess as sp

    from gradtrace.render import execute

    script = tmp_path / "deep.py"
    script.write_text(SEQ_SCRIPT)

    def slow_run(*args, **kwargs):
        raise sp.TimeoutExpired(cmd="dot", timeout=kwargs.get("timeout"))

    monkeypatch.setattr(execute.subprocess, "run", slow_run)
    monkeypatch.setattr(execute.shutil, "which", lambda name: "/usr/bin/dot")
    result = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / "x.svg"), "--timeout", "1"])
    assert result.exit_code == 1, result.output
    msg = result.stderr
    assert "--timeout" in msg and "--max-nodes" in msg and "--depth" in msg and "--module" in msg, msg
    assert not re.search(r"\b(timeout|max_nodes|module)=", msg), msg
    t = gradtrace.trace(lambda w: (w * w).sum(), torch.ones(2, requires_grad=True))
    with pytest.raises(gradtrace.RenderTimeoutError, match=r"timeout=\.\.\."):
        t.render(tmp_path / "y.svg")
    monkeypatch.undo()

    # A note drawn on the diagram: the CLI names --max-nodes and --module, Python max_nodes= and module=.
    cli = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / "n.dot"), "--max-nodes", "2"])
    assert cli.exit_code == 0, cli.output
    source = (tmp_path / "n.dot").read_text()
    assert "--max-nodes 2" in source and "max_nodes=" not in source and "module=" not in source
    lib = gradtrace.Trace.from_json(CliRunner().invoke(main, ["render", str(script), "-o", "-", "--format", "json"]).stdout)
    assert "max_nodes=2" in lib.to_dot(max_nodes=2).source
    # An empty --module is a usage error that names --module.
    empty = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / "e.dot"), "--module", ""])
    assert empty.exit_code == 2 and "--module must be" in empty.output, empty.output
