"""Importing gradtrace's capture side without numpy prints no torch warning about numpy."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NO_NUMPY = "import sys; sys.modules['numpy'] = None\n"  # as if numpy were not installed


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", _NO_NUMPY + code],
                          capture_output=True, text=True, env=env, timeout=120)


def test_no_numpy_warning_on_import_and_trace():
    r = _run("import gradtrace, gradtrace.recorder, torch\n"
             "t = gradtrace.trace(lambda x: (x * x).sum(), torch.ones(2, requires_grad=True))\n"
             "print(t.node(t.loss).label)")
    assert r.returncode == 0, r.stderr
    assert "NumPy" not in r.stderr and r.stdout.strip() == "sum"


def test_other_warnings_are_not_hidden():
    r = _run("import warnings, gradtrace.recorder\n"
             "warnings.warn('Failed to initialize NumPy: later, from the user', UserWarning)")
    assert r.returncode != 0 and "later, from the user" in r.stderr  # -W error: the warning still raises
    r = _run("import warnings\nbefore = list(warnings.filters)\nimport gradtrace.recorder\n"
             "assert warnings.filters == before, 'gradtrace left a warning filter installed'")
    assert r.returncode == 0, r.stderr
