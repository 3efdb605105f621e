"""The pieces of watch / check --every-step under torchrun that need no second process: the multi-rank history
(its spread against numbers computed here, its CSV, JSON and page), the step-number sampling rule, the ranks'
agreement on the first broken step (over an in-memory store), and the environment a re-run starts with.
The real 2-process runs are in test_distributed_watch_runs.py."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import re
import time
from typing import Any

import pytest
import torch
from torch import nn

import gradtrace
from gradtrace.distributed.env import RankInfo
from gradtrace.distributed.gather import RankFailure
from gradtrace.errors import GradtraceError
from gradtrace.watching.agree import MEET_EVERY, StepAgreement
from gradtrace.watching.history import History
from gradtrace.watching.rankhistory import RankHistories, load_history
from gradtrace.watching.sentinel import Alarm


def _rank_history(rank: int, steps: int = 12, every: int = 1) -> dict[str, Any]:
    """A real single-rank history: a small model trained on this rank's own batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    with gradtrace.watch(model, every=every) as w:
        for _ in range(steps):
            x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    return w.history.to_dict()


@pytest.fixture(scope="module")
def two() -> RankHistories:
    h0, h1 = _rank_history(0), _rank_history(1)
    return RankHistories.build("train.py", 3, [
        {"rank": 0, "status": "ok", "why": None, "history": h0},
        {"rank": 1, "status": "failed", "why": "train.py raised an exception (RuntimeError: boom)", "history": h1},
        {"rank": 2, "status": "missing", "why": "rank 2 posted nothing within 5 s", "history": None}], "every 1")


def test_spread_is_the_lowest_highest_and_relative_spread_of_every_steps_local_loss(two: RankHistories) -> None:
    h0, h1 = two.history(0), two.history(1)
    assert two.history(2) is None
    l0 = dict((s, v) for s, v in h0.to_dict()["loss_all"])
    l1 = dict((s, v) for s, v in h1.to_dict()["loss_all"])
    loss = two.spread["loss"]
    assert loss["steps"] == list(range(1, 13)) and loss["ranks"] == [2] * 12
    for i, s in enumerate(loss["steps"]):
        lo, hi = min(l0[s], l1[s]), max(l0[s], l1[s])
        assert (loss["min"][i], loss["max"][i]) == (lo, hi)
        assert loss["rel"][i] == pytest.approx((hi - lo) / ((abs(lo) + abs(hi)) / 2))
    out = two.spread["out_rms"]
    assert out["steps"] == h0.steps == h1.steps
    a, b = h0.module("0", "out_rms"), h1.module("0", "out_rms")
    assert out["module"]["0"] == pytest.approx([abs(x - y) / ((x + y) / 2) for x, y in zip(a, b)])


def test_a_nonfinite_loss_on_one_rank_makes_that_steps_spread_nan() -> None:
    h0, h1 = _rank_history(0, steps=3), _rank_history(1, steps=3)
    h1["loss_all"][1][1] = "NaN"
    doc = RankHistories.build("t.py", 2, [{"rank": 0, "status": "ok", "why": None, "history": h0},
                                          {"rank": 1, "status": "ok", "why": None, "history": h1}], "")
    loss = doc.spread["loss"]
    assert loss["rel"][1] == "NaN" and loss["min"][1] == loss["max"][1] == h0["loss_all"][1][1]
    assert doc.to_dict()["spread"]["loss"]["rel"][1] == "NaN"  # (JSON has no NaN: the string, as in a history)


def test_json_round_trip_and_old_single_rank_files_still_load(two: RankHistories, tmp_path) -> None:
    path = two.save(tmp_path / "run.json")
    again = load_history(path)
    assert isinstance(again, RankHistories) and again.to_dict() == two.to_dict()
    assert [r["status"] for r in again.ranks] == ["ok", "failed", "missing"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(_rank_history(0, steps=2)))
    assert isinstance(load_history(single), History)
    with pytest.raises(GradtraceError, match="gradtrace-watch-ranks"):
        load_history({"format": "something else"})
    with pytest.raises(GradtraceError, match="no rank 7"):
        two.history(7)


def test_csv_has_a_rank_column_and_each_ranks_rows(two: RankHistories) -> None:
    rows = list(csv.reader(io.StringIO(two.to_csv())))
    assert rows[0] == ["rank", "step", "series", "name", "metric", "value"]
    for rank in (0, 1):
        own = [r[1:] for r in rows[1:] if r[0] == str(rank)]
        single = list(csv.reader(io.StringIO(two.history(rank).to_csv())))[1:]
        assert own == single
    spread = [r for r in rows if r[0] == "all" and r[4] == "loss_min"]
    assert [float(r[5]) for r in spread] == pytest.approx(two.spread["loss"]["min"])


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_page_has_a_frame_per_rank_and_a_policy_that_allows_their_code(two: RankHistories) -> None:
    page = two.to_html()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"] and directives["connect-src"] == ["'none'"]
    frames = re.findall(r'<iframe data-rank="(\d)"[^>]*srcdoc="([^"]*)"', page)
    assert [r for r, _ in frames] == ["0", "1", "2"]
    for rank, doc in frames[:2]:
        inner = html.unescape(doc)
        assert inner.startswith("<!DOCTYPE html>") and "gradtrace-watch-data" in inner
        for body in re.findall(r"<script>(.*?)</script>", inner, re.S):
            assert _sha(body) in directives["script-src"]
        for body in re.findall(r"<style>(.*?)</style>", inner, re.S):
            assert _sha(body) in directives["style-src"]
    outer = re.sub(r'srcdoc="[^"]*"', "", page)
    for body in re.findall(r"<script>(.*?)</script>", outer, re.S):
        assert _sha(body) in directives["script-src"]
    assert ' style="' not in outer  # an inline style attribute would be blocked by the policy
    assert "rank 1 (failed)" in outer and "rank 2 (missing)" in outer and "RuntimeError: boom" in outer
    assert "<polyline" in outer  # the loss band across ranks is drawn


def test_sampling_under_torchrun_is_a_rule_of_the_step_number_not_of_timing() -> None:
    from gradtrace.watching.rankwatch import RankWatcher

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with RankWatcher(model) as w:
        for step in range(1, 26):
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            if step % 3 == 0:
                time.sleep(0.02)  # uneven steps: the adaptive default would set its period from these
            opt.step()
    assert sorted(set(w.sampled)) == [1, 11, 21]


class _MemoryBoard:
    """Board's interface over a dict: this rank's posts and what the other ranks posted."""

    def __init__(self, rank: int, world: int, others: dict[str, dict[int, str]], timeout: float = 0.2) -> None:
        self.info = RankInfo(rank, world, rank, "127.0.0.1", 1)
        self.timeout = timeout
        self.posted: dict[str, str] = {}
        self.others = others

    def post(self, what: str, value: str, rank: int | None = None) -> None:
        self.posted[what] = value

    def read(self, what: str, rank: int) -> str | None:
        return self.others.get(what, {}).get(rank)

    def wait(self, what: str, ranks: list[int], timeout: float | None = None, **_: Any) -> dict[int, str | None]:
        return {r: self.read(what, r) if self.read(what, r) is not None else None for r in ranks}


def test_ranks_agree_only_at_meetings_on_the_earliest_broken_step() -> None:
    rank1 = json.dumps({"step": 7, "text": "loss is NaN", "backward_call": 7, "optimizer": "opt0", "rank": 1})
    board = _MemoryBoard(0, 2, {f"meet{MEET_EVERY}": {1: rank1}})
    agree = StepAgreement(board)  # type: ignore[arg-type]
    mine = Alarm(9, "gradients are not finite", 9, "opt0")
    assert agree(mine, 9) is None and board.posted == {}  # not a meeting: no rank stops alone
    assert agree(None, MEET_EVERY - 1) is None
    agreed = agree(None, MEET_EVERY)
    assert (agreed.step, agreed.rank, agreed.text) == (7, 1, "loss is NaN")  # rank 1's step 7 is before rank 0's 9
    assert json.loads(board.posted[f"meet{MEET_EVERY}"])["step"] == 9  # rank 0 told its own first broken step


def test_a_rank_missing_at_a_meeting_is_named_and_one_that_ended_is_not_waited_for() -> None:
    with pytest.raises(RankFailure, match=r"rank 1 did not reach step 32") as e:
        StepAgreement(_MemoryBoard(0, 2, {}))(None, MEET_EVERY)  # type: ignore[arg-type]
    assert e.value.ranks == [1]
    ended = _MemoryBoard(0, 2, {"end": {1: json.dumps({"failed": False})}})
    assert StepAgreement(ended)(None, MEET_EVERY) is None  # type: ignore[arg-type]


def test_the_rerun_starts_without_the_first_runs_torchrun_variables() -> None:
    from gradtrace.watching.rankreplay import rerun_env

    first = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x",
             "TORCHELASTIC_USE_AGENT_STORE": "True", "GRADTRACE_STATUS_FILE": "/tmp/s", "GROUP_RANK": "0"}
    # A leaked MASTER_PORT or run id would point the new group at the first run's store and keys.
    assert rerun_env(first) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"}


def test_the_rank_selector_shows_one_rank_at_a_time_in_a_browser(two: RankHistories, tmp_path) -> None:
    from tests.browser import chromium_page

    path = two.save(tmp_path / "run.html")
    with chromium_page() as page:
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        visible = "Array.from(document.querySelectorAll('iframe')).map(f => !f.hidden)"
        assert page.evaluate(visible) == [True, False, False]
        page.click("button[data-rank='1']")
        assert page.evaluate(visible) == [False, True, False]
        assert page.get_attribute("button[data-rank='1']", "aria-pressed") == "true"
        frame = page.frames[2]  # (the main frame, then the ranks' frames in order)
        frame.wait_for_selector("#runname")
        assert frame.evaluate("document.getElementById('runinfo').textContent") != ""  # its script ran
        assert not errors, errors  # no script or style refused by the policy


def _set(path: str, value: Any) -> Any:
    """A mutation of a multi-rank history: the field at ``path`` (dotted, list indices as numbers) set to ``value``;
    the value ``_DROP`` removes it."""
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            d = d[p]
        if value is _DROP:
            del d[last]
        else:
            d[last] = value
    return mutate


_DROP = object()
_MALFORMED = {
    "spread.loss a list": (_set("spread.loss", [1, 2]), "spread.loss"),
    "out_rms.module a list": (_set("spread.out_rms.module", []), "spread.out_rms.module"),
    "out_rms.module value an int": (None, "spread.out_rms.module"),  # (set below: its key is a module path)
    "loss.min a huge int": (_set("spread.loss.min.0", 10 ** 400), "spread.loss.min"),
    "loss.min shorter than steps": (_set("spread.loss.min", []), "spread.loss.min"),
    "loss.min a bool": (_set("spread.loss.min.0", True), "spread.loss.min"),
    "loss.steps not ints": (_set("spread.loss.steps.0", "one"), "spread.loss.steps"),
    "spread missing": (_set("spread", _DROP), "'spread'"),
    "world_size missing": (_set("world_size", _DROP), "'world_size'"),
    "world_size a string": (_set("world_size", "two"), "'world_size'"),
    "ranks missing": (_set("ranks", _DROP), "'ranks'"),
    "ranks a dict": (_set("ranks", {"0": {}}), "'ranks'"),
    "a rank a string": (_set("ranks.0", "rank 0"), "ranks\\[0\\]"),
    "rank out of range": (_set("ranks.1.rank", 3), "ranks\\[1\\].rank"),
    "rank twice": (_set("ranks.1.rank", 0), "appears twice"),
    "status unknown": (_set("ranks.0.status", "<b>fine</b>"), "ranks\\[0\\].status"),
    "why a list": (_set("ranks.0.why", ["x"]), "ranks\\[0\\].why"),
    "history a list": (_set("ranks.0.history", []), "ranks\\[0\\].history"),
    "history of another format": (_set("ranks.0.history.format", "x"), "ranks\\[0\\].history.format"),
    "history steps a string": (_set("ranks.0.history.steps", "1,2"), "ranks\\[0\\].history.steps"),
    "script a dict": (_set("script", {}), "'script'"),
}


@pytest.mark.parametrize("name", list(_MALFORMED))
def test_a_malformed_multi_rank_history_is_refused_with_the_field_named(two: RankHistories, name: str) -> None:
    """A multi-rank history file is untrusted input: every field RankHistories reads is checked when it loads, and a
    wrong one is a GradtraceError naming it, never a raw KeyError / TypeError / OverflowError from an accessor."""
    mutate, field = _MALFORMED[name]
    if name == "out_rms.module value an int":
        data = two.to_dict()
        first = next(iter(data["spread"]["out_rms"]["module"]))
        data["spread"]["out_rms"]["module"][first] = 3
        field = "spread.out_rms.module"
    else:
        data = two.to_dict()
        mutate(data)
    with pytest.raises(GradtraceError, match=field):
        load_history(data)


def test_a_file_that_is_not_json_utf8_or_sane_is_refused_clearly(tmp_path) -> None:
    cases = {"text.json": b"not json at all", "latin1.json": b'{"format": "\xe9"}',
             "deep.json": (b'{"format": "gradtrace-watch-ranks", "version": 1, "ranks": ' + b"[" * 100000 + b"]" * 100000 + b"}")}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(GradtraceError, match="is not a watch history"):
            load_history(tmp_path / name)
    with pytest.raises(GradtraceError, match="cannot read"):
        load_history(tmp_path / "absent.json")
    with pytest.raises(GradtraceError, match="a path or a parsed dict"):
        load_history([1, 2])  # type: ignore[arg-type]
