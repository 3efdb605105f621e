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
