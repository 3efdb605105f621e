"""Export to Google's Model Explorer: the graph JSON and its node-data overlays.

The files are checked three ways: against torch (every overlay value is torch's own number,
computed apart from the trace), against the structure of the trace (every node and edge is
there, namespaces follow module paths), and, where the ``ai-edge-model-explorer`` package is
installed, by building them through its own ``graph_builder`` / ``node_data_builder``
dataclasses with ``dacite`` in strict mode (an unknown key or a wrong type fails) and comparing
what those classes serialise with what gradtrace wrote.
"""

from __future__ import annotations

import os

import dataclasses
import json
import math
import re
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradtrace
from gradtrace.cli import main
from gradtrace.render.inert import dot_id
from gradtrace.render.model_explorer import GRAPH_ID, METRICS, namespace, node_data, to_graph_json, write_files

from .test_inert import PAYLOADS, hostile_trace

try:  # a test extra (scripts/install.sh --test), not a dependency: its C++ adapter is ~480 MB
    import dacite
    from model_explorer import graph_builder as me_graph
    from model_explorer import node_data_builder as me_data
    from model_explorer.utils import remove_none
except ImportError:  # pragma: no cover - depends on the machine
    me_graph = None

# Locally a machine without it skips these checks; in CI (CI=true) they must run: missing is a failure.
if me_graph is None and os.environ.get("CI"):
    raise ImportError("ai-edge-model-explorer is a test extra: scripts/install.sh --test installs it, and CI checks "
                      "the model-explorer files with it")
needs_me = pytest.mark.skipif(me_graph is None, reason="ai-edge-model-explorer is not installed "
                              "(scripts/install.sh --test installs it to check the files with Model Explorer's own classes)")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))


def _step(seed: int = 0):
    """A traced SGD step, and the same step done by torch alone (the oracle), from the same start."""
    torch.manual_seed(seed)
    net = Net()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradtrace.capture() as cap:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    ref = Net()
    ref.load_state_dict(start)
    ref_out = ref.encoder(x)
    ref_out.retain_grad()
    nn.functional.cross_entropy(ref.head(torch.tanh(ref_out)), y).backward()
    return cap.trace, ref, ref_out


@pytest.fixture(scope="module")
def step():
    return _step()


def _nodes(doc):
    (graph,) = doc["graphs"]
    return {n["id"]: n for n in graph["nodes"]}


def test_graph_holds_every_node_and_edge_in_module_namespaces(step):
    t, ref, _ = step
    doc = to_graph_json(t)
    assert doc["label"] == "gradtrace" and doc["graphs"][0]["id"] == GRAPH_ID  # one collection: what the JSON loader opens
    nodes = _nodes(doc)
    assert set(nodes) == {dot_id(n.key) for n in t.nodes}
    edges = {(e["sourceNodeId"], nid, int(e["sourceNodeOutputId"])) for nid, n in nodes.items() for e in n["incomingEdges"]}
    assert edges == {(e.src, e.dst, e.output) for e in t.edges}
    for nid, n in nodes.items():
        assert [e["targetNodeInputId"] for e in n["incomingEdges"]] == [str(i) for i in range(len(n["incomingEdges"]))]
        assert len(n["inputsMetadata"]) == len(n["incomingEdges"])
    w = nodes[t.find("encoder.2.weight")[0]]
    assert w["namespace"] == "encoder/2" and w["label"] == "encoder.2.weight"
    shapes = {a["value"] for a in w["outputsMetadata"][0]["attrs"] if a["key"] == "tensor_shape"}
    assert shapes == {"float32" + json.dumps(list(ref.encoder[2].weight.shape))}
    groups = doc["graphs"][0]["groupNodeAttributes"]
    assert groups["encoder/2"] == {"module": "encoder.2", "class": "Linear"} and groups["head"]["class"] == "Linear"
    assert groups[""]["optimizer"].startswith("SGD")


def test_overlays_are_torchs_numbers(step):
    t, ref, ref_out = step
    grad = node_data(t, "grad_norm")[GRAPH_ID]["results"]
    rms = node_data(t, "value_rms")[GRAPH_ID]["results"]
    ratio = node_data(t, "update_ratio")[GRAPH_ID]["results"]
    for name, p in ref.named_parameters():
        key = t.find(name)[0]
        assert grad[key]["value"] == pytest.approx(p.grad.norm().item(), rel=1e-5), name
        assert rms[key]["value"] == pytest.approx(p.detach().pow(2).mean().sqrt().item(), rel=1e-5), name
        # SGD without momentum: Δw = -lr·grad, so ‖Δw‖/‖w‖ = 0.1·‖grad‖/‖w‖.
        assert ratio[key]["value"] == pytest.approx(0.1 * p.grad.norm().item() / p.detach().norm().item(), rel=1e-3), name
    out = next(k for k in t.find("addmm", module="encoder.2"))
    assert grad[out]["value"] == pytest.approx(ref_out.grad.norm().item(), rel=1e-5)
    assert rms[out]["value"] == pytest.approx(ref_out.detach().pow(2).mean().sqrt().item(), rel=1e-5)
    assert not (set(ratio) - {dot_id(n.key) for n in t.nodes if n.kind == "param"}), "update ratio is a parameter's"
    nonfinite = node_data(t, "nonfinite")[GRAPH_ID]["results"]
    assert len(nonfinite) == len(t.nodes) and all(r["value"] == 0 and r["bgColor"] == "#ffffff" for r in nonfinite.values())


def test_nan_counts_and_colours():
    """A log of a negative number: the NaN count per node is torch's, and the node is red."""
    x = torch.tensor([1.0, -2.0, 3.0, -4.0], requires_grad=True)
    t = gradtrace.trace(lambda v: torch.log(v).sum(), x)
    ref = torch.log(x.detach())
    results = node_data(t, "nonfinite")[GRAPH_ID]["results"]
    log = t.find("log")[0]
    # value NaN×2; its gradient 1/x is finite, the sum's value is NaN and its gradient 1.
    assert results[log]["value"] == int(torch.isnan(ref).sum()) and results[log]["bgColor"] == "#e0112b"
    assert results[t.loss]["value"] == 1
    assert json.loads(json.dumps(node_data(t, "value_rms"), allow_nan=False))  # no NaN reaches the file


def test_colours_follow_the_diagrams_decades():
    from gradtrace.render.style import BANDS

    doc = node_data(_step()[0], "grad_norm")[GRAPH_ID]
    # thresholds are upper bounds (Model Explorer: value <= threshold takes its colour), one per decade
    assert [t["value"] for t in doc["thresholds"][:-1]] == [10.0 ** e for e in range(-6, 3)]
    assert [t["bgColor"] for t in doc["thresholds"]] == [b.color for b in BANDS]
    for r in doc["results"].values():
        band = max((b for b in BANDS if r["value"] >= b.low), key=lambda b: b.low)
        assert r["bgColor"] == (band.color if r["value"] > 0 else "#b8b8b8")


def test_unrolled_calls_are_groups_of_their_own():
    torch.manual_seed(0)
    cell = nn.RNNCell(2, 3)

    def run(x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(1, 3)
        for t in range(x.shape[0]):
            h = cell(x[t], h)
        return h.sum()

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return run(x)

    t = gradtrace.trace(Wrap(), torch.randn(3, 1, 2))
    spaces = {n["namespace"] for n in _nodes(to_graph_json(t)).values()}
    assert {"cell", "cell (call 2)", "cell (call 3)"} <= spaces


def test_namespace_escapes_slashes_and_backslashes():
    assert namespace("encoder.layer.3") == "encoder/layer/3"
    assert namespace("enc#3.norm") == "enc (call 3)/norm"
    assert namespace("a/b.c") == "a\\/b/c"  # Model Explorer's own escape: one group "a/b", not two
    assert namespace("a\\.b") == "a\u29f5/b"  # a trailing backslash cannot escape the next "/"
    assert namespace("") == ""


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_strings_stay_inert(payload):
    t = hostile_trace([payload, "x"])
    doc = to_graph_json(t)
    text = json.dumps(doc, ensure_ascii=True, allow_nan=False)
    assert text.isascii() and json.loads(text) == doc
    unsafe = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)

    for s in strings(doc):
        assert not unsafe.search(s), f"unprintable text reaches Model Explorer: {s!r}"
    ids = [n["id"] for n in doc["graphs"][0]["nodes"]]
    assert len(set(ids)) == len(ids) == len(t.nodes)
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids), "ids are plain: no hostile key names a group or a node"
    for m in METRICS:
        assert set(node_data(t, m)[GRAPH_ID]["results"]) <= set(ids)


@needs_me
@pytest.mark.parametrize("payload", ["plain", *PAYLOADS[:6], "\\", "a/b"])
def test_graph_builds_through_model_explorers_own_classes(payload, step):
    t = step[0] if payload == "plain" else hostile_trace([payload, "y"])
    doc = json.loads(json.dumps(to_graph_json(t)))
    collection = dacite.from_dict(me_graph.GraphCollection, doc, config=dacite.Config(strict=True))
    assert isinstance(collection.graphs[0].nodes[0], me_graph.GraphNode)
    assert remove_none(dataclasses.asdict(collection)) == doc, "what Model Explorer's classes write is what gradtrace wrote"
    # the adapter API's form of the same graphs serialises too
    from model_explorer.utils import convert_adapter_response

    assert convert_adapter_response({"graphCollections": [collection]})["graphCollections"][0]["label"] == "gradtrace"


@needs_me
@pytest.mark.parametrize("metric", list(METRICS))
def test_node_data_builds_through_model_explorers_own_classes(metric, step):
    doc = node_data(step[0], metric)
    data = dacite.from_dict(me_data.GraphNodeData, doc[GRAPH_ID], config=dacite.Config(strict=True))
    assert isinstance(next(iter(data.results.values())), me_data.NodeDataResult)
    model = me_data.ModelNodeData(graphsData={GRAPH_ID: data})
    assert json.loads(model.to_json_string()) == json.loads(json.dumps(doc))


def test_write_files_and_render(tmp_path, step):
    t = step[0]
    paths = write_files(t, tmp_path / "s.graph.json")
    assert [p.name for p in paths] == ["s.graph.json", "s.grad_norm.json", "s.value_rms.json", "s.nonfinite.json",
                                       "s.update_ratio.json"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(to_graph_json(t)))
    assert json.loads(paths[1].read_text()) == json.loads(json.dumps(node_data(t, "grad_norm")))
    # the same files from render(), format from the name; byte-identical run to run
    out = t.render(tmp_path / "r.graph.json")
    assert out.read_bytes() == paths[0].read_bytes() and (tmp_path / "r.update_ratio.json").exists()
    for bad in ("x.json", "x.svg", "x", ".graph.json"):
        with pytest.raises(gradtrace.RenderError, match=r"NAME\.graph\.json"):
            t.render(tmp_path / bad, format="model-explorer")
    with pytest.raises(gradtrace.RenderError, match="folder"):
        t.render(tmp_path / "no" / "x.graph.json")
    with pytest.raises(gradtrace.RenderError, match="unknown Model Explorer overlay 'grad'"):
        node_data(t, "grad")


def test_cli(tmp_path):
    from .test_cli import LOOP

    out = tmp_path / "step.graph.json"
    r = CliRunner().invoke(main, ["render", LOOP, "--format", "model-explorer", "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "overlays beside it: step.grad_norm.json, step.value_rms.json, step.nonfinite.json, step.update_ratio.json" in r.output
    assert json.loads(out.read_text())["graphs"][0]["id"] == GRAPH_ID
    assert json.loads((tmp_path / "step.update_ratio.json").read_text())[GRAPH_ID]["results"], "SGD stepped the weights"
    for args in (["-o", str(tmp_path / "x.json"), "--format", "model-explorer"], ["-o", "-", "--format", "model-explorer"]):
        r = CliRunner().invoke(main, ["render", LOOP, *args])
        assert r.exit_code == 2 and "NAME.graph.json" in r.output and not (tmp_path / "x.json").exists(), r.output
    r = CliRunner().invoke(main, ["render", LOOP, "-o", str(tmp_path / "d.graph.json"), "--depth", "1"])
    assert r.exit_code == 0 and "Model Explorer collapses modules itself" in r.output


def test_python_m_gradtrace_default_name(tmp_path):
    import shutil
    import subprocess

    from .test_cli import LOOP

    script = tmp_path / "loop.py"
    shutil.copy(LOOP, script)
    subprocess.run([sys.executable, "-m", "gradtrace", "render", str(script), "--format", "model-explorer"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in tmp_path.glob("loop.*.json")) == sorted(
        ["loop.graph.json"] + [f"loop.{m}.json" for m in METRICS])
    doc = json.loads((tmp_path / "loop.graph.json").read_text())
    assert all(math.isfinite(r["value"]) for r in json.loads((tmp_path / "loop.grad_norm.json").read_text())[GRAPH_ID]["results"].values())
    assert doc["graphs"][0]["nodes"]


# -- the files opened by Model Explorer itself, headless --------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_me
def test_model_explorer_opens_the_files_headless(tmp_path):
    """Model Explorer's own server and web app (Chromium, headless) load the graph and two overlays:
    the graph's node count and every node's label appear in its panels, as text, and a label made
    of HTML stays text (nothing runs)."""
    import shutil
    import subprocess
    import time
    import urllib.request

    pytest.importorskip("playwright", reason="playwright is not installed")
    from .browser import CHROMIUM, chromium_page

    if not (shutil.which("chromium") or __import__("os").path.exists(CHROMIUM)):
        pytest.skip("chromium is not installed")
    t = hostile_trace(["<img src=x onerror=window.__pwned=1>", "fc"])
    paths = write_files(t, tmp_path / "h.graph.json")
    port = _free_port()
    code = ("import sys; from model_explorer import cmdline; sys.argv = ['model-explorer'] + sys.argv[1:]; cmdline.main()")
    server = subprocess.Popen([sys.executable, "-c", code, str(paths[0]), f"--node_data_paths={paths[1]},{paths[3]}",
                               "--no_open_in_browser", "--host=127.0.0.1", f"--port={port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            if line.startswith(f"http://127.0.0.1:{port}/?data="):
                url = line.strip()
        assert url, "Model Explorer's server did not start"
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
        errors: list[str] = []
        with chromium_page() as page:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
            page.goto(url)
            page.get_by_text(f"{len(t.nodes)} nodes").first.wait_for(timeout=60_000)
            page.get_by_text("NaN and inf elements", exact=False).first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            pwned = page.evaluate("window.__pwned")
        assert "Unsupported JSON format" not in body and "Failed to process" not in body
        assert "gradtrace: gradient norm" in body
        assert "<img src=x onerror=window.__pwned=1>" in body, "the label is shown as text"
        assert pwned is None and not errors, errors
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
