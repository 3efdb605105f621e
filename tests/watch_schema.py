"""The watch history's contract (docs/watch.md, the brief shared with the page), checked field by field."""

from __future__ import annotations

import json
import math

NUMBER_STRINGS = {"NaN", "inf", "-inf"}


def _number(x, where):
    if x is None or x in NUMBER_STRINGS:
        return
    assert isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x), f"{where}: {x!r} is not a number"


def validate(d: dict) -> None:
    """Raise AssertionError naming the first field that breaks the contract."""
    json.dumps(d, allow_nan=False)  # plain JSON, no NaN tokens
    assert d["format"] == "gradtrace-watch" and d["version"] == 1
    assert isinstance(d["script"], str)
    assert isinstance(d["every"], int) and d["every"] >= 1
    assert isinstance(d["steps_run"], int)
    steps = d["steps"]
    assert steps == sorted(set(steps)) and all(isinstance(s, int) and 1 <= s <= d["steps_run"] for s in steps)
    n = len(steps)
    assert len(d["loss"]) == n
    for x in d["loss"]:
        _number(x, "loss")
    for s, x in d.get("loss_all", []):
        assert isinstance(s, int)
        _number(x, "loss_all")
    for key, values in d["lr"].items():
        assert "/" in key and len(values) == n, key
    for o in d["optimizers"]:
        assert set(o) >= {"name", "type", "params"}
    paths = {m["path"] for m in d["modules"]}
    for m in d["modules"]:
        assert set(m) >= {"path", "type", "parent", "depth"}
        assert m["parent"] is None or m["parent"] in paths, m
        assert isinstance(m["depth"], int)
    for p in d["params"]:
        assert set(p) >= {"name", "module", "shape"}
        assert p["name"] in d["series"]["param"]
    for kind in ("module", "param"):
        for name, metrics in d["series"][kind].items():
            for metric, values in metrics.items():
                assert len(values) == n, (kind, name, metric)
                for x in values:
                    _number(x, f"{kind} {name} {metric}")
    assert set(d["series"]["module"]) <= paths
    for name in ("out_rms", "out_nonfinite", "grad_norm"):
        assert all(name in m for m in d["series"]["module"].values())
    for name in ("grad_norm", "grad_rms", "value_norm", "update_ratio", "grad_nonfinite"):
        assert all(name in p for p in d["series"]["param"].values())
    if "clip" in d:
        assert len(d["clip"]["before"]) == len(d["clip"]["after"]) == n
    for e in d["events"]:
        assert isinstance(e["step"], int) and e["kind"] in ("alarm", "skipped", "warning") and isinstance(e["text"], str)
    alarms = [e["step"] for e in d["events"] if e["kind"] == "alarm"]
    assert d["first_alarm"] == (min(alarms) if alarms else None) or d["first_alarm"] is not None
    for k, t in d["traces"].items():
        assert k.isdigit() and t["format"] == "gradtrace-trace"
    assert set(d["overhead"]) >= {"plain_s", "watched_s"}
