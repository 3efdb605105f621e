"""The history's writers given any name torch accepts: a module named with lone surrogates is written, not a crash."""

from __future__ import annotations

import csv

import torch
from torch import nn

from gradtrace import watch

from .test_watch import close

NAME = "\ud83d\ude00"  # a surrogate pair as two code points: torch takes it as a module name, UTF-8 cannot encode it


def test_csv_escapes_surrogate_names_and_keeps_torchs_numbers(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module(NAME, nn.Linear(4, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    norms = []
    with watch(m, every=1) as w:
        for step in range(3):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            loss = m(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            norms.append(torch.linalg.vector_norm(m[0].weight.grad).item())  # torch's own
            opt.step()
    for suffix in ("csv", "json"):
        out = w.history.save(tmp_path / f"run.{suffix}")
        assert out.stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "run.csv").open(encoding="utf-8")))
    want = "\\ud83d\\ude00.weight"
    got = [(int(r["step"]), float(r["value"])) for r in rows
           if r["series"] == "param" and r["name"] == want and r["metric"] == "grad_norm"]
    assert [s for s, _ in got] == [1, 2, 3]
    assert all(close(v, n) for (_, v), n in zip(got, norms))
    assert w.history.to_csv().encode("utf-8")  # (the text itself is writable anywhere: standard output for -o -)
    assert not list(tmp_path.glob(".*tmp"))


OS_EXIT = """
import os, torch, torch.nn as nn
torch.manual_seed(0)
m = nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
for s in range(40):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(s))
    loss = m(x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    if s == 20: os._exit(5)
"""


def test_os_exit_mid_run_writes_the_history_then_passes_its_status(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ex_osexit.py"
    script.write_text(OS_EXIT)
    out = tmp_path / "ex.json"
    r = subprocess.run([sys.executable, "-m", "gradtrace", "watch", str(script), "-o", str(out), "--every", "1"],
                       capture_output=True, text=True, timeout=120, env=os.environ.copy(), cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    assert "wrote" in r.stderr
    d = json.loads(out.read_text())
    # torch, independently: the same 21 steps
    torch.manual_seed(0)
    m = nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    losses = []
    for s in range(21):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(s))
        loss = m(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert d["steps_run"] == 21 and d["steps"] == list(range(1, 22))
    assert all(close(a, b) for a, b in zip(d["loss"], losses))


def test_a_history_written_to_a_fifo_or_dev_stdout_goes_through_them(tmp_path):
    # The history's save had its own 'temporary file, then rename': -o pipe.json replaced the FIFO with a regular
    # file (its reader got nothing), and -o /dev/stdout, run as root, renamed a file over the /dev/stdout link itself
    # (found by doing it on this machine). render's writer handles both: the history uses it now.
    import json
    import os
    import stat
    import subprocess
    import sys
    import threading

    script = tmp_path / "s.py"
    script.write_text("import torch\nm = torch.nn.Linear(2, 1)\no = torch.optim.SGD(m.parameters(), lr=0.1)\n"
                      "for _ in range(3):\n    o.zero_grad(); m(torch.randn(4, 2)).sum().backward(); o.step()\n")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    done = subprocess.run([sys.executable, "-m", "gradtrace", "watch", str(script), "-o", str(fifo), "--every", "1"],
                          capture_output=True, timeout=300, cwd=tmp_path)
    reader.join(timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert fifo.is_fifo(), "the FIFO is still a FIFO"
    assert json.loads(got[0])["steps_run"] == 3
    piped = subprocess.run([sys.executable, "-m", "gradtrace", "watch", str(script), "-o", "/dev/stdout", "--format",
                            "json", "--every", "1"], capture_output=True, timeout=300, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert json.loads(piped.stdout)["steps_run"] == 3
    # (the old writer, run as root, renamed its temporary file over /dev/stdout: the device link became a file)
    assert not stat.S_ISREG(os.lstat("/dev/stdout").st_mode)


def test_the_watch_format_of_a_name_without_a_suffix_is_html_as_help_says():
    # --help: "Default: from OUTPUT's suffix, else html"; a suffix-less name (-o /dev/stdout, -o run) was refused
    from pathlib import Path

    import pytest

    from gradtrace.errors import GradtraceError
    from gradtrace.watching.history import watch_format_for

    assert watch_format_for(Path("/dev/stdout"), None) == "html"
    assert watch_format_for(Path("run"), None) == "html"
    assert watch_format_for(Path("run.JSON"), None) == "json"
    with pytest.raises(GradtraceError, match="cannot tell the format"):
        watch_format_for(Path("run.txt"), None)
