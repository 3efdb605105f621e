"""A trace file is untrusted input: every malformed document is one GradtraceError naming what is
wrong, and whatever loads renders (DOT source, text, HTML) without crashing."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradtrace
from gradtrace import GradtraceError, RenderOptions, Trace
from gradtrace.render.html import to_html
from gradtrace.render.text import to_text

from .models import MLP


def _valid_doc() -> dict:
    torch.manual_seed(0)
    net = MLP(3, 4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    with gradtrace.capture(net) as cap:
        F.nll_loss(net(x), y).backward()
        opt.step()
    return json.loads(cap.trace.to_json())


DOC = _valid_doc()


def _load(doc) -> Trace:
    return Trace.from_json(json.dumps(doc))


def _node(doc, kind="op"):
    return next(n for n in doc["nodes"] if n["kind"] == kind and n["values"])


def _with(change):
    doc = copy.deepcopy(DOC)
    change(doc)
    return doc


CASES = [
    # (what is changed, the words the message must hold)
    (lambda d: d.update(nodes={"a": 1}), ["nodes", "JSON array", "JSON object"]),
    (lambda d: d.update(edges=None), ["edges", "JSON array", "null"]),
    (lambda d: d.update(loss=3), ["loss", "string", "3"]),
    (lambda d: d.update(loss="nope"), ["loss", "'nope'", "not the key"]),
    (lambda d: d.pop("nodes"), ["'nodes'", "missing"]),
    (lambda d: _node(d).update(forward_step="7"), ["forward_step", "integer", "'7'"]),
    (lambda d: _node(d).update(backward_step=-1), ["backward_step", "integer", "-1"]),
    (lambda d: _node(d).update(kind="tensor"), ["kind", "'op'", "'tensor'"]),
    (lambda d: _node(d).update(label=None), ["label", "string", "null"]),
    (lambda d: _node(d).update(source=5), ["source", "string or null", "5"]),
    (lambda d: _node(d).update(module=["a"]), ["module", "string"]),
    (lambda d: _node(d).update(values="x"), ["values", "JSON array"]),
    (lambda d: _node(d)["values"][0].update(numel=-4), ["numel", "-4"]),
    (lambda d: _node(d)["values"][0].update(numel=2**80), ["numel", "2**62"]),
    (lambda d: _node(d)["values"][0].update(nan=float("nan")), ["nan (a count)", "integer"]),
    (lambda d: _node(d)["values"][0].update(shape=[2, "3"]), ["shape[1]", "'3'"]),
    (lambda d: _node(d)["values"][0].update(shape=5), ["shape", "JSON array"]),
    (lambda d: _node(d)["values"][0].update(mean="lots"), ["mean", "'lots'"]),
    (lambda d: _node(d)["values"][0].update(mean=10**400), ["mean", "range of a float"]),
    (lambda d: _node(d)["values"][0].update(dtype=32), ["dtype", "string"]),
    (lambda d: _node(d)["values"][0].pop("device"), ["'device'", "missing"]),
    (lambda d: _node(d)["values"][0].update(values=[None] * _node(d)["values"][0]["numel"]), ["values[0]", "number", "None"]),
    (lambda d: _node(d)["values"][0].update(values=[1.0]), ["values", "numel=", "[1.0]"]),
    (lambda d: d["edges"][0].update(output=99), ["edges[0]", "output 99", "out of range"]),
    (lambda d: d["edges"][0].update(output=True), ["edges[0] output", "True"]),
    (lambda d: d["edges"][0].update(uses=0), ["uses", "0"]),
    (lambda d: d["edges"][0].update(grad=[]), ["edges[0] grad", "JSON object"]),
    (lambda d: d["edges"][0].update(dst="ghost"), ["edges[0]", "'ghost'"]),
    (lambda d: d["edges"].append({"src": d["loss"], "dst": d["nodes"][0]["key"]}), ["cycle"]),
    (lambda d: d["edges"].append({"src": d["loss"], "dst": d["loss"]}), ["cycle"]),
    (lambda d: d["nodes"].append(copy.deepcopy(d["nodes"][0])), ["two nodes", "unique"]),
    (lambda d: d.update(modules={"fc1": 1}), ["modules['fc1']", "string"]),
    (lambda d: d.update(modules=[]), ["modules", "JSON object"]),
    (lambda d: d.update(notes="a note"), ["notes", "JSON array"]),
    (lambda d: d.update(notes=[None]), ["notes[0]", "string"]),
    (lambda d: d["optimizer"].update(lr="fast"), ["optimizer lr", "'fast'"]),
    (lambda d: d["optimizer"].update(hyperparameters=[["momentum"]]), ["hyperparameters[0]", "pair"]),
    (lambda d: d["optimizer"].update(hyperparameters=[["momentum", 0.9]]), ["hyperparameters[0] value", "string"]),
    (lambda d: d["optimizer"].pop("name"), ["optimizer", "'name'", "missing"]),
    (lambda d: d.update(optimizer="SGD"), ["optimizer", "JSON object"]),
    (lambda d: d["nodes"].__setitem__(0, "op0"), ["nodes[0]", "JSON object"]),
    # Numbers outside what a tensor can have: downstream they feed logarithms and ratios (diff crashed on a negative norm).
    (lambda d: _node(d)["values"][0].update(norm=-1.0), ["values[0] norm", ">= 0", "-1.0"]),
    (lambda d: _node(d)["values"][0].update(std=-0.5), ["values[0] std", ">= 0", "-0.5"]),
    (lambda d: _node(d)["values"][0].update(norm="-inf"), ["values[0] norm", ">= 0", "-inf"]),
    (lambda d: _node(d)["values"][0].update(min=5.0, max=1.0), ["min 5.0 is above max 1.0"]),
    (lambda d: _node(d)["values"][0].update(nan=2**40), ["nan + inf", "more than numel"]),
    (lambda d: d["edges"].append(copy.deepcopy(d["edges"][0])), ["edges[", "twice", "one edge"]),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_malformed_document_names_what_is_wrong(i):
    change, words = CASES[i]
    with pytest.raises(GradtraceError) as err:
        _load(_with(change))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("text,words", [
    ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    ('{"format": "gradtrace-trace", "format": "x"}', ["'format'", "twice"]),
    ('{"format": "gradtrace-trace", "version": 1, "nodes": [], "edges": [], "loss": "a", "loss": "b"}', ["'loss'", "twice"]),
    ('{"format": "gradtrace-trace", "version": 1, "nodes": [' + "9" * 5000 + "]}", ["not JSON"]),
    ('{"format": "gradtrace-trace", "version": true}', ["version True"]),
    (b"\xff\xfe{", ["not JSON"]),
])
def test_malformed_text_is_refused(text, words):
    with pytest.raises(GradtraceError) as err:
        Trace.from_json(text)
    for w in words:
        assert w in str(err.value)


def test_valid_document_still_loads_and_renders():
    t = _load(DOC)
    assert t.to_json() == json.dumps(DOC)
    _render_all(t)


def _render_all(t: Trace) -> None:
    t.to_dot().source.encode("utf-8")
    t.to_dot(depth=0).source.encode("utf-8")
    to_text(t, RenderOptions()).encode("utf-8")
    to_html(t).encode("utf-8")
    t.diagnose()


# -- fuzzing: mutate a valid document anywhere; the only exception allowed is GradtraceError ------

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.sampled_from(["", "7", "nan", "inf", "op0", "param0", "input0", "<x>", "\x1b[31m", "a:b"]),
    st.just([]), st.just({}), st.just([1, "a"]), st.just([[[[]]]]), st.just({"src": "op0"}),
)


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(DOC) if p and p[0] not in ("format", "version")]


def _mutate(doc, path, action, junk, other):
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = junk
    elif action == "copy":  # a value from elsewhere in the document, of a plausible but wrong kind
        src = doc
        for step in other:
            src = src[step]
        parent[last] = copy.deepcopy(src)
    elif action == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["delete", "replace", "copy", "duplicate"]), JUNK,
                          st.sampled_from(PATHS)), min_size=1, max_size=3))
def test_fuzzed_documents_raise_only_gradtrace_error(mutations):
    doc = copy.deepcopy(DOC)
    for path, action, junk, other in mutations:
        try:
            _mutate(doc, path, action, junk, other)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or retyped this path
    try:
        text = json.dumps(doc)
    except ValueError:
        return
    try:
        t = Trace.from_json(text)
    except GradtraceError:
        return
    _render_all(t)


def test_nan_and_infinity_literals_where_numbers_belong_load():
    doc = copy.deepcopy(DOC)
    _node(doc)["values"][0]["mean"] = math.nan  # json.dumps writes NaN, which Python's json reads
    t = _load(doc)
    assert math.isnan(t.node(_node(doc)["key"]).value.mean)
