"""``gradtrace diff A B``: outputs, exit statuses, and clear errors for bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import gradtrace
from gradtrace.cli import main
from gradtrace.diff.cli import EXIT_BEYOND, EXIT_COMPARED, EXIT_NOT_WRITTEN, EXIT_NOTHING_MATCHED, EXIT_USAGE

from .models import SmallCNN
from .test_diff import Net, data, traced


def run(*args):
    return CliRunner().invoke(main, ["diff", *[str(a) for a in args]], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """a.json: a step; b.json: the same model and batch under bf16 autocast; cnn.json: another model."""
    folder = tmp_path_factory.mktemp("traces")
    torch.manual_seed(0)
    net = Net()
    x, y = data()
    traced(net, x, y).render(folder / "a.json")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        traced(net, x, y).render(folder / "b.json")
    gradtrace.trace(SmallCNN(), torch.randn(2, 1, 8, 8), loss=lambda out: out.sum()).render(folder / "cnn.json")
    return folder


def test_text_table_by_default(files):
    r = run(files / "a.json", files / "b.json")
    assert r.exit_code == EXIT_COMPARED == 0, r.output
    assert r.output.startswith(f"gradtrace diff: A = {files / 'a.json'}, B = {files / 'b.json'}")
    assert "largest changes" in r.output and "to_copy" in r.output


def test_outputs_by_suffix(files, tmp_path):
    for name in ("d.json", "d.txt", "d.dot"):
        r = run(files / "a.json", files / "b.json", "-o", tmp_path / name)
        assert r.exit_code == 0, r.output
        assert (tmp_path / name).stat().st_size > 0
    a = gradtrace.Trace.from_json((files / "a.json").read_text())
    b = gradtrace.Trace.from_json((files / "b.json").read_text())
    written = json.loads((tmp_path / "d.json").read_text())
    assert written == json.loads(a.diff(b, names=(str(files / "a.json"), str(files / "b.json"))).to_json())


@pytest.mark.dot
def test_html_and_svg(files, tmp_path):
    for name in ("d.html", "d.svg"):
        r = run(files / "a.json", files / "b.json", "-o", tmp_path / name)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "d.html").read_text().startswith("<!DOCTYPE html>")
    assert b"<svg" in (tmp_path / "d.svg").read_bytes()


def test_fail_above_exits_1_only_beyond_the_factor(files):
    a = gradtrace.Trace.from_json((files / "a.json").read_text())
    b = gradtrace.Trace.from_json((files / "b.json").read_text())
    worst = max(abs(c.grad_log2) for c in a.diff(b).changes if c.grad_log2 is not None)
    assert 0 < worst < 1
    below, above = 2 ** (worst * 0.9), 2 ** (worst * 1.1)
    r = run(files / "a.json", files / "b.json", "--fail-above", below)
    assert r.exit_code == EXIT_BEYOND == 1 and "changed beyond --fail-above" in r.output
    assert run(files / "a.json", files / "b.json", "--fail-above", above).exit_code == 0
    assert run(files / "a.json", files / "a.json", "--fail-above", 1).exit_code == 0, "identical: nothing beyond ×1"
    for bad in ("0.5", "nan", "inf", "-2"):
        r = run(files / "a.json", files / "b.json", "--fail-above", bad)
        assert r.exit_code == EXIT_USAGE and "--fail-above" in r.output, bad


def test_files_that_are_not_traces_are_usage_errors(files, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    (tmp_path / "bad.json").write_text('{"format": "gradtrace-trace", "version": 1, "nodes": [], "edges": []}')
    for path, says in ((tmp_path / "notes.txt", "not JSON"), (tmp_path / "other.json", "format"), (tmp_path / "bad.json", "missing")):
        r = run(files / "a.json", path)
        assert r.exit_code == EXIT_USAGE == 2, r.output
        assert "B" in r.output and "is not a trace gradtrace can read" in r.output and says in r.output
    r = run(tmp_path / "missing.json", files / "a.json")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_unrelated_traces_say_nothing_matched(files, tmp_path):
    r = run(files / "a.json", files / "cnn.json", "-o", tmp_path / "d.json")
    assert r.exit_code == EXIT_NOTHING_MATCHED == 3
    assert "nothing matched" in r.output
    assert not (tmp_path / "d.json").exists()


def test_output_that_cannot_be_written(files, tmp_path):
    r = run(files / "a.json", files / "b.json", "-o", tmp_path / "no" / "d.json")
    assert r.exit_code == EXIT_NOT_WRITTEN == 4 and "does not exist" in r.output
    r = run(files / "a.json", files / "b.json", "-o", tmp_path / "d.xyz")
    assert r.exit_code == 2 and "unknown suffix" in r.output
    r = run(files / "a.json", files / "b.json", "-o", "-")
    assert r.exit_code == 2 and "--format" in r.output


def test_missing_graphviz_is_exit_4_with_its_hint(files, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    r = run(files / "a.json", files / "b.json", "-o", tmp_path / "d.svg")
    assert r.exit_code == EXIT_NOT_WRITTEN and "install Graphviz" in r.output


def test_console_script_and_stdout(files):
    proc = subprocess.run([sys.executable, "-m", "gradtrace", "diff", str(files / "a.json"), str(files / "b.json"),
                           "-o", "-", "--format", "json"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["format"] == "gradtrace-diff" and all(not isinstance(m["grad_log2"], float) or math.isfinite(m["grad_log2"])
                                                   for m in d["matched"])


def test_two_ranks_of_a_multi_rank_file(files, tmp_path):
    """rank 0 against rank 1 of one torchrun capture (the multi-rank file holds each rank's trace whole)."""
    a = gradtrace.Trace.from_json((files / "a.json").read_text())
    b = gradtrace.Trace.from_json((files / "b.json").read_text())
    multi = tmp_path / "step.json"
    multi.write_text(json.dumps({"format": "gradtrace-multirank", "version": 1, "world_size": 2, "step": 1, "ranks": [
        {"rank": 0, "local_rank": 0, "trace": a.to_dict(), "collective": []},
        {"rank": 1, "local_rank": 1, "trace": b.to_dict(), "collective": []}]}))
    r = run(multi, multi, "--rank-a", 0, "--rank-b", 1, "-o", tmp_path / "d.json")
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "d.json").read_text())
    assert got["names"] == [f"{multi} rank 0", f"{multi} rank 1"]
    assert got["matched"] == json.loads(a.diff(b).to_json())["matched"]
    r = run(multi, files / "a.json")
    assert r.exit_code == EXIT_USAGE and "ranks [0, 1]" in r.output and "--rank-a K" in r.output
    r = run(multi, multi, "--rank-a", 0, "--rank-b", 5)
    assert r.exit_code == EXIT_USAGE and "no rank 5" in r.output
    r = run(files / "a.json", files / "b.json", "--rank-a", 0)
    assert r.exit_code == EXIT_USAGE and "needs a multi-rank file" in r.output
    (tmp_path / "broken.json").write_text('{"format": "gradtrace-multirank", "ranks": [{"rank": 0, "trace": {"nodes": 1}}]}')
    r = run(tmp_path / "broken.json", files / "a.json", "--rank-a", 0)
    assert r.exit_code == EXIT_USAGE and "is not a trace gradtrace can read" in r.output and "multi-rank" in r.output
    # The whole file is checked, not only the rank asked for: rank 1's collective record names no node.
    doc = json.loads(multi.read_text())
    doc["ranks"][1]["collective"] = [{"node": "ghost", "op": "all_reduce", "shape": [1],
                                      "reduced": None}]
    (tmp_path / "ghost.json").write_text(json.dumps(doc))
    r = run(tmp_path / "ghost.json", files / "a.json", "--rank-a", 0)
    assert r.exit_code == EXIT_USAGE and "'ghost'" in r.output, r.output


@pytest.mark.dot
def test_layout_timeout_is_exit_4_naming_the_option(files, tmp_path):
    r = run(files / "a.json", files / "b.json", "-o", tmp_path / "d.html", "--timeout", "0.000001")
    assert r.exit_code == EXIT_NOT_WRITTEN and "--timeout" in r.output and "timeout=" not in r.output


@pytest.mark.dot
def test_a_binary_format_without_output_goes_to_stdout_whole(files):
    proc = subprocess.run([sys.executable, "-m", "gradtrace", "diff", str(files / "a.json"), str(files / "b.json"),
                           "--format", "png"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"\x89PNG\r\n\x1a\n")
