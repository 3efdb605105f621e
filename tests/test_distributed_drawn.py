"""The collective made visible where people look: each parameter's reduced gradient drawn beside its local one.

Two real 2-process runs under torch.distributed.run (gloo on CPU), started together once for the module:
DDP (a rank-dependent branch, a parameter rank 0 leaves unused) and FSDP2 (``fully_shard``, gradients
sharded on dim 0). From each run's multi-rank file, the test writes what the CLI writes (rank 0's SVG,
``step.rank1.svg``, the replay page with its rank selector) and reads the numbers back from the SVG's
labels and tooltips and from the page's inspect panel in Chromium.

torch is the oracle: the test rebuilds each rank's model and batch in this process, computes each rank's
local gradient with plain torch, the reduced gradient as the mean of the two ranks' local gradients and,
for FSDP2, the shard of that mean each rank holds (``torch.chunk`` on dim 0).

A trace without a collective (one process) renders byte for byte as before (the golden files were
written by the code before the reduced gradient was drawn).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch

import gradtrace
from gradtrace.distributed import MultiTrace
from gradtrace.distributed.output import write_multi
from gradtrace.errors import GradtraceError
from gradtrace.records import EXACT_VALUES_MAX, ReducedGrad, TensorStats
from gradtrace.render import fmt
from gradtrace.render.html import page_data, to_html
from gradtrace.render.inert import dot_id
from gradtrace.render.options import RenderOptions

from .browser import chromium_page
from .test_distributed_runs import ENV, SCRIPTS, TIMEOUT, _module
from .test_inert import PAYLOADS, assert_inert_svg, hostile_trace

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"
GOLDEN = Path(__file__).parent / "golden"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


# -- the two runs, once for the module ---------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[MultiTrace, Path]]:
    base = tmp_path_factory.mktemp("drawn")
    procs = {}
    for name, script in (("ddp", "dist_ddp_branch.py"), ("fsdp", "dist_fsdp.py")):
        (base / name).mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gradtrace", "render", str(SCRIPTS / script), "-o", "step.json"]
        procs[name] = subprocess.Popen(cmd, cwd=base / name, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    try:
        for name, proc in procs.items():
            try:
                _, err = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"the {name} run hung (killed after {TIMEOUT} s)")
            assert proc.returncode == 0, err[-3000:]
            out[name] = (MultiTrace.from_json((base / name / "step.json").read_text()), base / name)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return out


def _ddp_oracle() -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """rank -> parameter label -> (local gradient, reduced gradient), by plain torch."""
    mod = _module("dist_ddp_branch")
    local = {}
    for rank in (0, 1):
        net, x, y = mod.build(rank)
        ((net(x, rank) - y) ** 2).mean().backward()
        local[rank] = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    out: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for rank in (0, 1):
        out[rank] = {}
        for name, g in local[rank].items():
            # DDP's average; a parameter the other rank did not use counts as zero there (find_unused_parameters)
            other = local[1 - rank].get(name, torch.zeros_like(g))
            out[rank][f"module.{name}"] = (g, (g + other) / 2)
    return out


def _fsdp_oracle() -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """rank -> parameter label -> (local gradient of the whole parameter, this rank's shard of the mean)."""
    mod = _module("dist_fsdp")
    local = {}
    for rank in (0, 1):
        net, x, y = mod.build(rank)
        ((net(x) - y) ** 2).mean().backward()
        local[rank] = {name: p.grad.clone() for name, p in net.named_parameters()}
    return {rank: {name: (local[rank][name], torch.chunk((local[0][name] + local[1][name]) / 2, 2, dim=0)[rank])
                   for name in local[rank]} for rank in (0, 1)}


# -- reading the numbers back --------------------------------------------------------------------------


def _svg_nodes(svg: bytes) -> dict[str, tuple[list[str], str]]:
    """DOT node name -> (the label's text lines, the tooltip)."""
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        if g.get("class") != "node":
            continue
        name = g.find(f"{SVG}title").text
        texts = [e.text for e in g.iter(f"{SVG}text") if e.text]
        tips = [a.get(f"{XLINK}title") for a in g.iter(f"{SVG}a") if a.get(f"{XLINK}title")]
        out[name] = (texts, tips[0] if tips else "")
    return out


def _close_values(printed: str, t: torch.Tensor) -> None:
    """A label's summary equals torch's: a small tensor's values (the first six), else a larger one's
    ``mean ± std [min, max]`` (three significant digits)."""
    got = [float(x) for x in NUMBER.findall(printed)]
    t = t.double()
    if t.numel() <= EXACT_VALUES_MAX:
        want = t.flatten().tolist()[: fmt.INLINE_VALUES]
        assert len(got) == len(want), (printed, want)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (printed, want)
        return
    mean, _, low, high = got
    assert "±" in printed, printed
    assert [mean, low, high] == pytest.approx([float(t.mean()), float(t.min()), float(t.max())], rel=6e-3, abs=1e-6), printed


def _tooltip_block(tip: str, heading: str) -> dict[str, float]:
    """The statistics printed under ``heading`` in a tooltip: {'mean': ..., 'norm': ..., ...}."""
    lines = tip.replace("\xa0", " ").split("\n")  # (Graphviz writes the indent's second space as a no-break space)
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line)
    return {k: float(v) for k, v in re.findall(r"(min|max|mean|std|norm) (-?[\d.e+-]+)", " ".join(block))}


def _close_stats(found: dict[str, float], t: torch.Tensor) -> None:
    t = t.double()
    assert found["norm"] == pytest.approx(float(t.norm()), rel=1e-5, abs=1e-9)
    assert found["mean"] == pytest.approx(float(t.mean()), rel=1e-5, abs=1e-9)
    assert found["max"] == pytest.approx(float(t.max()), rel=1e-5, abs=1e-9)


def _label_after(texts: list[str], prefix: str) -> str:
    hits = [x for x in texts if x.startswith(prefix)]
    assert len(hits) == 1, (prefix, texts)
    return hits[0][len(prefix):]


# -- the SVG: label and tooltip ------------------------------------------------------------------------


@pytest.mark.dot
def test_ddp_svg_of_every_rank_shows_local_and_all_reduced_gradient(runs: Any, tmp_path: Path) -> None:
    multi, _ = runs["ddp"]
    oracle = _ddp_oracle()
    written = write_multi(multi, tmp_path / "step.svg", "svg", RenderOptions(), every_rank=True)
    assert [p.name for p, _ in written] == ["step.svg", "step.rank1.svg"]
    for r, path in zip(multi.ranks, (tmp_path / "step.svg", tmp_path / "step.rank1.svg")):
        nodes = _svg_nodes(path.read_bytes())
        params = {n.label: n.key for n in r.trace.nodes if n.kind == "param"}
        assert set(params) == set(oracle[r.rank])
        for label, (local, reduced) in oracle[r.rank].items():
            texts, tip = nodes[dot_id(params[label])]
            _close_values(_label_after(texts, f"∇ local (rank {r.rank}) "), local)
            _close_values(_label_after(texts, "∇ reduced (all_reduce, avg of 2 ranks) "), reduced)
            _close_stats(_tooltip_block(tip, f"gradient, local (rank {r.rank}'s own, before the all-reduce)"), local)
            _close_stats(_tooltip_block(tip, "gradient, reduced (after the all-reduce: the average over 2 ranks"), reduced)
        # The note says where the reduced gradient is: drawn, no longer "only in the multi-rank file".
        caption = " ".join(e.text or "" for e in ET.fromstring(path.read_bytes()).iter(f"{SVG}text"))
        assert "drawn beside it" in caption


@pytest.mark.dot
def test_fsdp2_svg_shows_the_shard_of_the_reduced_gradient_each_rank_holds(runs: Any, tmp_path: Path) -> None:
    multi, _ = runs["fsdp"]
    oracle = _fsdp_oracle()
    write_multi(multi, tmp_path / "step.svg", "svg", RenderOptions(), every_rank=True)
    for r, path in zip(multi.ranks, (tmp_path / "step.svg", tmp_path / "step.rank1.svg")):
        nodes = _svg_nodes(path.read_bytes())
        params = {n.label: n for n in r.trace.nodes if n.kind == "param"}
        assert set(params) == set(oracle[r.rank])
        for label, (local, shard) in oracle[r.rank].items():
            full = fmt.shape_of(tuple(local.shape))
            texts, tip = nodes[dot_id(params[label].key)]
            _close_values(_label_after(texts, f"∇ local (rank {r.rank}) "), local)
            assert "∇ reduced (reduce_scatter, avg of 2 ranks)" in texts
            printed = _label_after(texts, f"shard {r.rank}/2 of {full}, placements Shard(dim=0): ")
            if shard.numel():
                _close_values(printed, shard)
                _close_stats(_tooltip_block(tip, "gradient, reduced (after the reduce-scatter"), shard)
            else:
                assert printed == "empty"
            assert f"rank {r.rank} holds shard {r.rank} of 2 (numbered from 0) of the full {full}" in tip
            _close_stats(_tooltip_block(tip, f"gradient, local (rank {r.rank}'s own, before the reduce-scatter)"), local)


def test_the_multi_rank_file_says_which_shard_and_a_rank_trace_round_trips(runs: Any) -> None:
    multi, cwd = runs["fsdp"]
    doc = json.loads((cwd / "step.json").read_text())
    for r in doc["ranks"]:
        assert {tuple(c["shard"]) for c in r["collective"]} == {(r["rank"], 2)}
        # The multi-rank file keeps each rank's trace as recorded: the reduced gradient once, in 'collective'.
        assert not any("reduced" in n for n in r["trace"]["nodes"])
    t1 = multi.trace(1)
    again = gradtrace.Trace.from_json(t1.to_json())
    assert [n.reduced for n in again.nodes] == [n.reduced for n in t1.nodes]
    assert sum(n.reduced is not None for n in again.nodes) == 4
    # Older gradtrace ignores the field (version 1 still): without it, the file is the local trace as recorded.
    d = json.loads(t1.to_json())
    assert d["version"] == 1
    for n in d["nodes"]:
        n.pop("reduced", None)
    assert json.dumps(d) == multi.ranks[1].trace.to_json()


# -- the replay page: the inspect panel of the selected rank, in Chromium ----------------------------


PANEL = """(which) => { const t = document.querySelector('#panel table[data-grad=' + which + ']');
  if (!t) return null; const h = t.previousElementSibling;
  const v = {}; t.querySelectorAll('td[data-field]').forEach(td => { v[td.dataset.field] = td.dataset.value; });
  return [h.textContent, v]; }"""


def _panel_of(page: Any, rank: int, label: str) -> tuple[tuple[str, dict], tuple[str, dict]]:
    page.select_option("#traces", str(rank))
    page.wait_for_selector(f'body[data-ready="{rank}"]')  # (the index of the trace shown)
    page.fill("#search", label)
    page.press("#search", "Enter")
    page.wait_for_function("(l) => document.querySelector('#panel h2') && document.querySelector('#panel h2').textContent === l", arg=label)
    return page.evaluate(PANEL, "local"), page.evaluate(PANEL, "reduced")


def _close_panel(values: dict[str, str], t: torch.Tensor) -> None:
    t = t.double()
    assert tuple(int(x) for x in NUMBER.findall(values["shape"])) == tuple(t.shape)
    assert float(values["norm"]) == pytest.approx(float(t.norm()), rel=1e-5, abs=1e-9)
    assert float(values["mean"]) == pytest.approx(float(t.mean()), rel=1e-5, abs=1e-9)
    assert float(values["min"]) == pytest.approx(float(t.min()), rel=1e-5, abs=1e-9)


def test_replay_page_panel_shows_the_reduced_gradient_of_the_selected_rank(runs: Any, tmp_path: Path) -> None:
    pages = {}
    for name in ("ddp", "fsdp"):
        pages[name] = write_multi(runs[name][0], tmp_path / f"{name}.html", "html", RenderOptions())[0][0]
    cases = [("ddp", r, label, local, reduced, "(after the all-reduce: the average over 2 ranks, the whole tensor")
             for r, params in _ddp_oracle().items() for label, (local, reduced) in params.items()
             if label in ("module.fc1.weight", "module.extra.bias", "module.fc2.bias")]
    cases += [("fsdp", r, label, local, shard, f"rank {r} holds shard {r} of 2 (numbered from 0) of the full")
              for r, params in _fsdp_oracle().items() for label, (local, shard) in params.items() if label in ("0.weight", "2.bias")]
    with chromium_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        for name in ("ddp", "fsdp"):
            page.goto(pages[name].as_uri())
            page.wait_for_selector("body[data-ready]")
            for case, rank, label, local, reduced, words in cases:
                if case != name:
                    continue
                (lt, lv), got = _panel_of(page, rank, label)
                assert lt.startswith(f"gradient, local (rank {rank}'s own"), lt
                _close_panel(lv, local)
                assert got is not None, f"no reduced gradient in the panel of {label} on rank {rank}"
                rt, rv = got
                assert words in rt, rt
                if reduced.numel():
                    _close_panel(rv, reduced)
                else:
                    assert rv["numel"] == "0"
        assert errors == []


# -- a trace without a collective: exactly as before ---------------------------------------------------


def _golden_trace() -> gradtrace.Trace:
    return gradtrace.Trace.from_json((GOLDEN / "single_mlp.json").read_text())


def test_a_single_process_trace_gives_the_same_dot_and_page_data_as_before() -> None:
    t = _golden_trace()
    assert t.to_dot(RenderOptions()).source.encode("utf-8") == (GOLDEN / "single_mlp.dot").read_bytes()
    assert not any("rd" in n for n in page_data(t, RenderOptions())["nodes"])
    assert "reduced" not in t.to_json()


@pytest.mark.dot
def test_a_single_process_trace_gives_the_same_svg_byte_for_byte(tmp_path: Path) -> None:
    path = _golden_trace().render(tmp_path / "step.svg")
    assert path.read_bytes() == (GOLDEN / "single_mlp.svg").read_bytes()


# -- a trace file is untrusted input -------------------------------------------------------------------


def _stats(shape: tuple[int, ...], dtype: str = "float32") -> TensorStats:
    n = 1
    for d in shape:
        n *= d
    return TensorStats(shape, dtype, "cpu", n, -1.0, 1.0, 0.0, 0.5, 1.0, 0, 0, None)


def _with_reduced(**fields: Any) -> str:
    """The golden single-process trace, fc1.weight given a reduced gradient (overridden by ``fields``), as JSON."""
    d = json.loads(_golden_trace().to_json())
    node = next(n for n in d["nodes"] if n["label"] == "fc1.weight")
    reduced = ReducedGrad("reduce_scatter", 1, 2, (6, 4), _stats((3, 4)), "(Shard(dim=0),)", 1, 2).to_dict()
    reduced.update(fields)
    node["reduced"] = reduced
    return json.dumps(d)


@pytest.mark.parametrize("fields, words", [
    ({"op": "all_gather"}, ["reduced op", "all_reduce"]),
    ({"rank": 2}, ["rank: 2 is not below world_size 2"]),
    ({"world_size": 0}, ["world_size", "integer from 1"]),
    ({"shape": [4, 6]}, ["reduced shape: [4, 6] is not the shape of the parameter", "[6, 4]"]),
    ({"shard": 2}, ["shard 2 of 2"]),
    ({"shards": None}, ["shard and shards go together"]),
    ({"shards": 3}, ["shard 1 of 3 is not a shard of 2 ranks"]),
    ({"op": "all_reduce"}, ["an all_reduce leaves every rank the whole gradient"]),
    ({"placements": 7}, ["placements", "a string"]),
    ({"stats": _stats((7, 4)).to_dict()}, ["28 elements is more than the whole gradient"]),
    ({"stats": "x"}, ["reduced stats", "JSON object"]),
])
def test_a_malformed_reduced_gradient_is_a_clear_error(fields: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(GradtraceError) as e:
        gradtrace.Trace.from_json(_with_reduced(**fields))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_a_reduced_gradient_on_an_op_node_is_refused() -> None:
    d = json.loads(_with_reduced())
    op = next(n for n in d["nodes"] if n["kind"] == "op")
    op["reduced"] = next(n for n in d["nodes"] if n["label"] == "fc1.weight")["reduced"]
    with pytest.raises(GradtraceError, match="op node has no gradient after a collective"):
        gradtrace.Trace.from_json(json.dumps(d))


@pytest.mark.dot
@pytest.mark.parametrize("payload", [PAYLOADS[0], PAYLOADS[1], "</script><script>alert(1)</script>", "\\N\x1b[31m\u202e", "a\\"])
def test_hostile_placements_and_dtype_are_inert_in_svg_and_page(payload: str) -> None:
    t = hostile_trace([payload])
    param = next(n for n in t.nodes if n.kind == "param")
    reduced = ReducedGrad("reduce_scatter", 0, 2, param.value.shape, _stats((1,), dtype=payload), payload, 0, 2)
    t = gradtrace.Trace(tuple(dataclasses.replace(n, reduced=reduced) if n is param else n for n in t.nodes),
                        t.edges, t.loss, t.modules, t.optimizer, t.notes)
    again = gradtrace.Trace.from_json(t.to_json())  # a file holding them loads (they are only text)
    source = again.to_dot(RenderOptions()).source
    proc = subprocess.run(["dot", "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode(errors="replace")
    assert_inert_svg(proc.stdout)
    assert "∇ reduced (reduce_scatter, avg of 2 ranks)" in proc.stdout.decode()
    # The page: the strings travel inside its JSON only, escaped so that they cannot close the script element.
    page = to_html(again)
    data = page.split('id="gradtrace-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data
    node = next(n for n in page_data(again, RenderOptions())["nodes"] if n.get("rd"))
    assert node["rd"]["op"] == "reduce_scatter"


# -- in one process: the alarm colour and Model Explorer ---------------------------------------------


def test_a_nan_the_collective_brought_colours_the_parameter_as_an_alarm() -> None:
    from gradtrace.render.style import ALARM

    from .test_distributed import _multi

    healthy = _multi()
    nan = torch.full((1, 4), float("nan"))
    sick = _multi(reduced_edit={"fc2.weight": nan})  # rank 1's reduced fc2.weight is NaN; its local one is finite
    for m, alarm in ((healthy, False), (sick, True)):
        t = m.trace(1)
        key = t.find("fc2.weight")[0]
        assert t.node(key).grad.finite
        node = next(line for line in t.to_dot().source.splitlines() if line.lstrip().startswith(f"{key} "))
        assert (f'BGCOLOR="{ALARM}"' in node) is alarm
        assert bool(next(n for n in page_data(t, RenderOptions())["nodes"] if n["k"] == key).get("a")) is alarm


def test_model_explorer_node_attributes_show_both_gradients() -> None:
    from gradtrace.render.model_explorer import to_graph_json

    from .test_distributed import _batch, _local_grads, _multi

    m = _multi()
    mean = (_local_grads(_batch(0))["fc1.bias"] + _local_grads(_batch(1))["fc1.bias"]) / 2
    doc = to_graph_json(m.trace(1))
    nodes = [n for g in doc["graphs"] for n in g["nodes"] if n["label"] == "fc1.bias"]
    attrs = dict((a["key"], a["value"]) for a in nodes[0]["attrs"])
    assert "∇ local (rank 1)" in attrs
    _close_values(attrs["∇ reduced (all_reduce, avg of 2 ranks)"], mean)
    assert float(attrs["reduced grad norm"]) == pytest.approx(float(mean.double().norm()), rel=1e-5)


@pytest.mark.parametrize("shard, words", [
    ([2, 2], ["shard: [2, 2] is not a shard of a reduce_scatter", "k < n"]),
    ([0, 3], ["3 shards is more than the 2 ranks"]),
    ("0/2", ["shard: expected null or [k, n]"]),
    ([0], ["shard: expected null or [k, n]"]),
    ([-1, 2], ["shard[0]", "integer from 0"]),
    ([0, True], ["shard[1]", "integer from 1"]),
])
def test_a_malformed_shard_in_the_multi_rank_file_is_a_clear_error(runs: Any, shard: Any, words: list[str]) -> None:
    doc = json.loads((runs["fsdp"][1] / "step.json").read_text())
    doc["ranks"][1]["collective"][0]["shard"] = shard
    with pytest.raises(GradtraceError) as e:
        MultiTrace.from_json(json.dumps(doc))
    for w in words:
        assert w in str(e.value), str(e.value)
    doc["ranks"][1]["collective"][0].pop("shard")  # a file written before the field: loads, the label says "this rank's shard"
    t = MultiTrace.from_json(json.dumps(doc)).trace(1)
    assert "this rank's shard of" in t.to_dot().source


def test_a_shard_on_an_all_reduce_record_is_refused(runs: Any) -> None:
    doc = json.loads((runs["ddp"][1] / "step.json").read_text())
    doc["ranks"][0]["collective"][0]["shard"] = [0, 2]
    with pytest.raises(GradtraceError, match="an all_reduce has none"):
        MultiTrace.from_json(json.dumps(doc))
