"""Every rank's history in one document (``gradtrace watch`` under torchrun): plain data, no torch.

The document (format ``gradtrace-watch-ranks``, version 1; see ``docs/watch.md``)::

    {"format": "gradtrace-watch-ranks", "version": 1, "script": "train.py", "world_size": 2,
     "every_rule": "...",
     "ranks": [{"rank": 0, "status": "ok", "why": null, "history": {... a gradtrace-watch document ...}},
               {"rank": 1, "status": "failed", "why": "train.py raised an exception", "history": {...}},
               {"rank": 2, "status": "missing", "why": "...", "history": null}],
     "spread": {"loss": {"steps": [...], "min": [...], "max": [...], "rel": [...], "ranks": [...]},
                "out_rms": {"steps": [...], "module": {"fc1": [...]}}}}

``status`` ``ok``: the rank's script ran to its end; ``failed``: it raised or
exited non-zero (its history holds the steps before); ``missing``: nothing
came from the rank in time. ``spread`` compares the ranks step by step:
``loss`` is every step's local loss (each rank's own batch, before any
reduction) as the lowest and highest over the ranks and their relative spread
``(max - min) / mean(|loss|)``; ``out_rms`` the same relative spread of each
module's output RMS at the sampled steps. A value is NaN (``"NaN"``) when any
rank's is not finite, null when fewer than two ranks have it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import GradtraceError
from .history import FORMAT, History, json_number, printable, read_number, watch_format_for, write_text

__all__ = ["RANKS_FORMAT", "RANKS_VERSION", "RankHistories", "load_history"]

RANKS_FORMAT = "gradtrace-watch-ranks"
RANKS_VERSION = 1


def _rel_spread(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    if not all(math.isfinite(v) for v in values):
        return math.nan
    mean = sum(abs(v) for v in values) / len(values)
    return (max(values) - min(values)) / mean if mean > 0 else 0.0


def spread(histories: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The cross-rank comparison of ``histories`` (rank -> gradtrace-watch document)."""
    by_step: dict[int, dict[int, float]] = {}
    for r, h in histories.items():
        for s, v in h.get("loss_all", []):
            x = read_number(v)
            if x is not None:
                by_step.setdefault(int(s), {})[r] = x
    steps = sorted(s for s, vals in by_step.items() if len(vals) > 1)
    loss = {"steps": steps, "min": [], "max": [], "rel": [], "ranks": []}
    for s in steps:
        vals = by_step[s]
        finite = [v for v in vals.values() if math.isfinite(v)]
        loss["min"].append(json_number(min(finite)) if finite else "NaN")
        loss["max"].append(json_number(max(finite)) if finite else "NaN")
        loss["rel"].append(json_number(_rel_spread(list(vals.values()))))
        loss["ranks"].append(len(vals))
    sampled = sorted(set.intersection(*[set(h["steps"]) for h in histories.values()])) if len(histories) > 1 else []
    modules: dict[str, list[Any]] = {}
    paths = sorted({p for h in histories.values() for p in h.get("series", {}).get("module", {})})
    where = {r: {s: i for i, s in enumerate(h["steps"])} for r, h in histories.items()}
    for path in paths:
        row = []
        for s in sampled:
            vals = []
            for r, h in histories.items():
                series = h.get("series", {}).get("module", {}).get(path)
                if series is not None:
                    x = read_number(series["out_rms"][where[r][s]])
                    if x is not None:
                        vals.append(x)
            row.append(json_number(_rel_spread(vals)))
        modules[path] = row
    return {"loss": loss, "out_rms": {"steps": sampled, "module": modules}}


_STATUSES = ("ok", "failed", "missing")


def _bad(where: str, expected: str, found: Any) -> GradtraceError:
    text = repr(found)
    return GradtraceError(f"multi-rank watch history: {where} should be {expected}, found "
                          f"{text if len(text) <= 60 else text[:57] + '...'} (a {type(found).__name__})")


def _int(x: Any, where: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < lo or (hi is not None and x > hi):
        raise _bad(where, f"a whole number from {lo}" + (f" to {hi}" if hi is not None else ""), x)
    return x


def _number(x: Any, where: str) -> None:
    """A number as the history writes it (see json_number): a finite float, 'NaN', 'inf', '-inf' or null."""
    if x is None or x in ("NaN", "inf", "-inf"):
        return
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _bad(where, "a number, 'NaN', 'inf', '-inf' or null", x)
    try:
        float(x)
    except OverflowError:
        raise _bad(where, "a number within float range", x) from None


def _list(x: Any, where: str, n: int | None = None) -> list[Any]:
    if not isinstance(x, list):
        raise _bad(where, "a list", x)
    if n is not None and len(x) != n:
        raise GradtraceError(f"multi-rank watch history: {where} has {len(x)} values but its 'steps' has {n}")
    return x


def _dict(x: Any, where: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise _bad(where, "an object", x)
    return x


def _check(data: dict[str, Any]) -> None:
    """Every field :class:`RankHistories` reads, checked: a GradtraceError naming the first one that is wrong."""
    world = _int(data.get("world_size"), "'world_size'", 1)
    for key in ("script", "every_rule"):
        if not isinstance(data.get(key, ""), str):
            raise _bad(f"'{key}'", "a string", data.get(key))
    seen: set[int] = set()
    for i, r in enumerate(_list(data.get("ranks"), "'ranks'")):
        where = f"ranks[{i}]"
        _dict(r, where)
        rank = _int(r.get("rank"), f"{where}.rank", 0, world - 1)
        if rank in seen:
            raise GradtraceError(f"multi-rank watch history: {where}.rank: rank {rank} appears twice")
        seen.add(rank)
        if r.get("status") not in _STATUSES:
            raise _bad(f"{where}.status", "one of " + ", ".join(_STATUSES), r.get("status"))
        if r.get("why") is not None and not isinstance(r["why"], str):
            raise _bad(f"{where}.why", "a string or null", r["why"])
        h = r.get("history")
        if h is not None:
            _dict(h, f"{where}.history")
            if h.get("format") != FORMAT:
                raise _bad(f"{where}.history.format", repr(FORMAT), h.get("format"))
            _int(h.get("steps_run"), f"{where}.history.steps_run")
            if h.get("first_alarm") is not None:
                _int(h["first_alarm"], f"{where}.history.first_alarm", 1)
            for j, s in enumerate(_list(h.get("steps"), f"{where}.history.steps")):
                _int(s, f"{where}.history.steps[{j}]", 1)
            if not isinstance(h.get("every_rule", ""), str):
                raise _bad(f"{where}.history.every_rule", "a string", h.get("every_rule"))
    spread = _dict(data.get("spread"), "'spread'")
    loss = _dict(spread.get("loss"), "spread.loss")
    steps = _list(loss.get("steps"), "spread.loss.steps")
    for j, s in enumerate(steps):
        _int(s, f"spread.loss.steps[{j}]", 1)
    for metric in ("min", "max", "rel"):
        for j, v in enumerate(_list(loss.get(metric), f"spread.loss.{metric}", len(steps))):
            _number(v, f"spread.loss.{metric}[{j}]")
    for j, v in enumerate(_list(loss.get("ranks", [0] * len(steps)), "spread.loss.ranks", len(steps))):
        _int(v, f"spread.loss.ranks[{j}]", 0, world)
    out = _dict(spread.get("out_rms"), "spread.out_rms")
    out_steps = _list(out.get("steps"), "spread.out_rms.steps")
    for j, s in enumerate(out_steps):
        _int(s, f"spread.out_rms.steps[{j}]", 1)
    for path, values in _dict(out.get("module"), "spread.out_rms.module").items():
        for j, v in enumerate(_list(values, f"spread.out_rms.module[{path!r}]", len(out_steps))):
            _number(v, f"spread.out_rms.module[{path!r}][{j}]")


class RankHistories:
    """What ``gradtrace watch`` under torchrun recorded: each rank's :class:`History` and the spread across ranks."""

    def __init__(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise GradtraceError(f"not a multi-rank watch history: a JSON object was expected, found a {type(data).__name__}")
        if data.get("format") != RANKS_FORMAT:
            raise GradtraceError(f"not a multi-rank watch history (format {data.get('format')!r}, expected {RANKS_FORMAT!r})")
        if data.get("version") != RANKS_VERSION:
            raise GradtraceError(f"multi-rank watch history version {data.get('version')!r}: this gradtrace reads "
                                 f"version {RANKS_VERSION}")
        _check(data)  # (a file is untrusted input: every field this class reads is checked here, named when wrong)
        self._data = data

    @classmethod
    def build(cls, script: str, world_size: int, ranks: list[dict[str, Any]], every_rule: str) -> RankHistories:
        """``ranks``: ``{"rank", "status", "why", "history"}`` for each rank, in rank order."""
        present = {r["rank"]: r["history"] for r in ranks if r.get("history") is not None}
        return cls({"format": RANKS_FORMAT, "version": RANKS_VERSION, "script": script, "world_size": world_size,
                    "every_rule": every_rule, "ranks": ranks, "spread": spread(present)})

    @property
    def world_size(self) -> int:
        return int(self._data["world_size"])

    @property
    def ranks(self) -> list[dict[str, Any]]:
        """Each rank's ``{"rank", "status", "why"}`` (without its history: see :meth:`history`)."""
        return [{k: v for k, v in r.items() if k != "history"} for r in self._data["ranks"]]

    def history(self, rank: int) -> History | None:
        """Rank ``rank``'s history (None: nothing came from that rank)."""
        for r in self._data["ranks"]:
            if r["rank"] == rank:
                return History(r["history"]) if r.get("history") is not None else None
        raise GradtraceError(f"no rank {rank} in this history (ranks 0 to {self.world_size - 1})")

    @property
    def spread(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data["spread"]))

    @property
    def first_alarm(self) -> int | None:
        alarms = [h["first_alarm"] for r in self._data["ranks"] if (h := r.get("history")) and h.get("first_alarm") is not None]
        return min(alarms) if alarms else None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self._data, indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """The single-rank table with a ``rank`` column first; the spread's rows have the rank ``all``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("rank", "step", "series", "name", "metric", "value"))
        for r in self._data["ranks"]:
            if r.get("history") is not None:
                for row in History(r["history"])._rows():
                    writer.writerow((r["rank"], *row))
        loss = self._data["spread"]["loss"]
        for i, s in enumerate(loss["steps"]):
            for metric in ("min", "max", "rel"):
                writer.writerow(("all", s, "spread", "", f"loss_{metric}", loss[metric][i]))
        out = self._data["spread"]["out_rms"]
        for path, values in out["module"].items():
            for s, v in zip(out["steps"], values):
                writer.writerow(("all", s, "spread", printable(path), "out_rms_rel", "" if v is None else v))
        return buf.getvalue()

    def to_html(self) -> str:
        """The offline page: each rank's watch page behind a rank selector, and the spread across ranks."""
        from ..render.watch_ranks import to_watch_ranks_html

        return to_watch_ranks_html(self.to_dict())

    def save(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write to ``path`` as JSON, CSV or the HTML page (format from the suffix unless ``fmt``), whole or not at all."""
        path = Path(path)
        kind = watch_format_for(path, fmt)
        return write_text(path, self.to_json() if kind == "json" else self.to_csv() if kind == "csv" else self.to_html())

    def __repr__(self) -> str:
        return f"RankHistories({self._data.get('script')!r}, world_size={self.world_size}, first_alarm={self.first_alarm})"


def load_history(source: str | Path | dict[str, Any]) -> History | RankHistories:
    """A watch history from a ``.json`` file (or its parsed dict): one rank's (:class:`History`), or every rank's
    (:class:`RankHistories`, written under torchrun). Files written before multi-rank histories load as before.
    A file that is not a watch history raises :class:`~gradtrace.errors.GradtraceError` saying what is wrong."""
    if isinstance(source, dict):
        data = source
    elif not isinstance(source, (str, os.PathLike)):
        raise GradtraceError(f"load_history takes a path or a parsed dict, not a {type(source).__name__}")
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise GradtraceError(f"{str(source)!r} is not a watch history: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise GradtraceError(f"{str(source)!r} is not a watch history: not JSON ({e.msg} at line {e.lineno}, "
                                 f"column {e.colno})") from None
        except RecursionError:
            raise GradtraceError(f"{str(source)!r} is not a watch history: its JSON is nested too deeply") from None
        except OSError as e:
            raise GradtraceError(f"cannot read the watch history {str(source)!r}: {e.strerror or e}") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == FORMAT:
        return History(data)
    if fmt == RANKS_FORMAT:
        return RankHistories(data)
    raise GradtraceError(f"not a gradtrace watch history (format {fmt!r}, expected {FORMAT!r} or {RANKS_FORMAT!r})")
