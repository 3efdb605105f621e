"""gradtrace.distributed in one process: rank detection, the multi-rank file (untrusted input), the cross-rank
findings, the gather's failure handling, and FSDP2's freed parameters. The real 2-process runs are in
test_distributed_runs.py."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from torch import nn

import gradtrace
from gradtrace.cli import main
from gradtrace.distributed import CollectiveGrad, MultiTrace, RankInfo, RankTrace, cross_rank_findings, rank_info
from gradtrace.distributed.gather import RankFailure, exchange
from gradtrace.distributed.launch import without_option
from gradtrace.distributed.output import rank_path, write_multi
from gradtrace.errors import GradtraceError
from gradtrace.recorder.stats import stats_of
from gradtrace.render.options import RenderOptions
from gradtrace.render.output import to_bytes

# -- rank detection ------------------------------------------------------------------------------


def test_rank_info_reads_torchruns_variables() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29400",
           "TORCHELASTIC_RUN_ID": "job", "TORCHELASTIC_RESTART_COUNT": "2"}
    info = rank_info(env)
    assert info == RankInfo(3, 4, 1, "node0", 29400, "job.2")
    assert not info.is_main
    assert rank_info({}) is None  # not under torchrun: a plain single-process run


@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "two"}, ["WORLD_SIZE='two'", "integer"]),
    ({"WORLD_SIZE": "2", "RANK": "2"}, ["RANK=2", "below WORLD_SIZE=2"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE=0", "at least 1"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "x"}, ["MASTER_PORT='x'"]),
])
def test_rank_info_refuses_a_broken_environment(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(GradtraceError) as e:
        rank_info(env)
    for w in words:
        assert w in str(e.value)


def test_without_option_keeps_the_scripts_own_arguments() -> None:
    argv = ["check", "--nproc-per-node=4", "t.py", "--step", "2", "--", "--nproc-per-node", "8"]
    assert without_option(argv, "--nproc-per-node") == ["check", "t.py", "--step", "2", "--", "--nproc-per-node", "8"]


# -- the multi-rank trace ---------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights on every "rank", as DDP broadcasts them
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _batch(rank: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(10 + rank)) * scale


def _local_grads(x: torch.Tensor) -> dict[str, torch.Tensor]:
    net = Tiny()
    net(x).pow(2).mean().backward()
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _multi(scales: tuple[float, ...] = (1.0, 1.0), reduced_edit: dict[str, torch.Tensor] | None = None) -> MultiTrace:
    """Two ranks traced in this process, with all-reduce records computed by torch (the mean of the local gradients)."""
    batches = [_batch(r, s) for r, s in enumerate(scales)]
    local = [_local_grads(x) for x in batches]
    mean = {k: sum(g[k] for g in local) / len(local) for k in local[0]}
    ranks = []
    for r, x in enumerate(batches):
        t = gradtrace.trace(Tiny(), x, loss=lambda out: out.pow(2).mean())
        coll = []
        for n in t.nodes:
            if n.kind == "param":
                g = mean[n.label] if r == 0 or reduced_edit is None else reduced_edit.get(n.label, mean[n.label])
                coll.append(CollectiveGrad(n.key, "all_reduce", tuple(g.shape), stats_of(g)))
        ranks.append(RankTrace(r, t, tuple(coll), r))
    return MultiTrace(tuple(ranks), 1, len(ranks))


def test_multi_trace_json_round_trip() -> None:
    m = _multi()
    text = m.to_json()
    back = MultiTrace.from_json(text)
    assert back.to_json() == text
    assert back.world_size == 2 and [r.rank for r in back.ranks] == [0, 1]
    key = back.trace(1).find("fc1.weight")[0]
    assert back.ranks[1].reduced(key).reduced == m.ranks[1].reduced(key).reduced


def test_single_and_multi_rank_files_say_which_loader_to_use() -> None:
    m = _multi()
    with pytest.raises(GradtraceError, match="MultiTrace.from_json"):
        gradtrace.Trace.from_json(m.to_json())
    with pytest.raises(GradtraceError, match="Trace.from_json"):
        MultiTrace.from_json(m.ranks[0].trace.to_json())


def _edit(doc: dict, path: tuple, value: object) -> str:
    d = json.loads(json.dumps(doc))
    target = d
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(d)


_DELETE = object()


@pytest.mark.parametrize("path, value, words", [
    (("version",), 2, ["version 2", "not supported"]),
    (("world_size",), 0, ["world_size", "from 1"]),
    (("world_size",), 1, ["2 ranks for a world_size of 1"]),
    (("world_size",), 10**9, ["more than gradtrace writes"]),
    (("ranks",), [], ["at least one rank"]),
    (("ranks", 1, "rank"), 0, ["ranks[1] rank", "comes after rank 0"]),
    (("ranks", 1, "rank"), 5, ["ranks[1] rank", "not below world_size 2"]),
    (("ranks", 0, "trace"), _DELETE, ["ranks[0]", "'trace' is missing"]),
    (("ranks", 0, "trace", "format"), "x", ["ranks[0] trace format"]),
    (("ranks", 1, "trace", "loss"), "nope", ["ranks[1] trace", "'nope' is not the key of any node"]),
    (("ranks", 0, "collective", 0, "node"), "op999", ["ranks[0] collective[0] node", "'op999'"]),
    (("ranks", 0, "collective", 0, "op"), "broadcast", ["ranks[0] collective[0] op", "'broadcast'"]),
    (("ranks", 0, "collective", 0, "shape"), [-1], ["ranks[0] collective[0] shape[0]"]),
    (("ranks", 0, "collective", 0, "reduced"), {"shape": []}, ["ranks[0] collective[0] reduced"]),
    (("ranks", 0, "collective"), "all", ["ranks[0] collective", "JSON array"]),
    (("ranks", 0, "local_rank"), True, ["ranks[0] local_rank"]),
    # What no real capture writes: fewer ranks than the world, a record contradicting its parameter.
    (("world_size",), 5, ["2 ranks for a world_size of 5", "every rank"]),
    (("ranks", 0, "collective", 0, "shape"), [3, 3], ["ranks[0] collective[0] shape", "[3, 3]", "is not the shape"]),
    (("ranks", 0, "collective", 0, "reduced", "norm"), -2.0, ["ranks[0] collective[0] reduced norm", ">= 0"]),
])
def test_a_malformed_multi_rank_file_is_a_clear_error(path: tuple, value: object, words: list[str]) -> None:
    doc = _multi().to_dict()
    with pytest.raises(GradtraceError) as e:
        MultiTrace.from_json(_edit(doc, path, value))
    for w in words:
        assert w in str(e.value)


def test_a_parameter_with_two_collective_records_is_refused() -> None:
    doc = _multi().to_dict()
    doc["ranks"][0]["collective"].append(doc["ranks"][0]["collective"][0])
    with pytest.raises(GradtraceError, match=r"ranks\[0\] collective\[\d+\] node: .* two collective records"):
        MultiTrace.from_json(json.dumps(doc))


@pytest.mark.parametrize("text", ["", "[]", '{"format": "gradtrace-multirank"}', '{"format": "gradtrace-multirank", "version": true}',
                                  '{"format": "gradtrace-multirank", "version": 1, "world_size": 1, "ranks": [[]]}'])
def test_garbage_never_escapes_as_another_exception(text: str) -> None:
    with pytest.raises(GradtraceError):
        MultiTrace.from_json(text)


# -- cross-rank findings ----------------------------------------------------------------------------


def test_healthy_ranks_raise_nothing() -> None:
    assert cross_rank_findings(_multi()) == []


def test_reduced_gradients_that_differ_across_ranks_are_an_alarm() -> None:
    doubled = {"fc2.weight": 2 * (_local_grads(_batch(0))["fc2.weight"] + _local_grads(_batch(1))["fc2.weight"]) / 2}
    found = cross_rank_findings(_multi(reduced_edit=doubled))
    assert [(r, f.kind, f.severity) for r, f in found] == [(1, "reduced_differs", "alarm")]
    assert "'fc2.weight'" in found[0][1].message and "rank 0" in found[0][1].message


def test_a_rank_with_much_larger_local_gradients_is_an_imbalance_warning() -> None:
    found = cross_rank_findings(_multi(scales=(1.0, 300.0)))
    kinds = [(r, f.kind, f.severity) for r, f in found]
    assert (1, "rank_imbalance", "warning") in kinds
    ratio = [f for _, f in found if f.kind == "rank_imbalance"][0].numbers["ratio"]
    # torch's own total norms of the two ranks' local gradients
    norms = [torch.sqrt(sum(g.pow(2).sum() for g in _local_grads(_batch(r, s)).values())) for r, s in ((0, 1.0), (1, 300.0))]
    assert ratio == pytest.approx(float(norms[1] / norms[0]), rel=1e-5)
    assert not any(f.kind == "rank_imbalance" for _, f in cross_rank_findings(_multi(scales=(1.0, 1.5))))


def test_a_nonfinite_reduced_gradient_from_finite_ranks_is_named() -> None:
    bad = {"fc1.bias": torch.tensor([float("inf"), 0.0, 1.0, 2.0])}
    found = cross_rank_findings(_multi(reduced_edit=bad))
    origin = [(r, f) for r, f in found if f.kind == "nonfinite_origin_rank"]
    assert len(origin) == 1 and origin[0][0] == 1 and "reduction made it" in origin[0][1].message


def test_a_different_graph_on_one_rank_is_named() -> None:
    m = _multi()
    other = gradtrace.trace(lambda x: Tiny()(x).relu(), _batch(1), loss=lambda out: out.pow(2).mean())
    m2 = MultiTrace((m.ranks[0], RankTrace(1, other)), 1, 2)
    found = [(r, f.kind) for r, f in cross_rank_findings(m2)]
    assert (1, "graph_differs") in found


# -- output ----------------------------------------------------------------------------------------


def test_write_multi_every_rank_and_one_file_formats(tmp_path: Path) -> None:
    m = _multi()
    written = write_multi(m, tmp_path / "step.dot", "dot", RenderOptions(), every_rank=True)
    assert [p.name for p, _ in written] == ["step.dot", "step.rank1.dot"]
    # Each rank's diagram is its trace with the collective records on their parameters (MultiTrace.trace).
    assert (tmp_path / "step.rank1.dot").read_bytes() == to_bytes(m.trace(1), "dot", RenderOptions())
    assert (tmp_path / "step.dot").read_bytes() == to_bytes(m.trace(0), "dot", RenderOptions())
    write_multi(m, tmp_path / "all.json", "json", RenderOptions())
    assert MultiTrace.from_json((tmp_path / "all.json").read_text()).to_json() == m.to_json()
    assert rank_path(Path("a/b.svg"), 7) == Path("a/b.rank7.svg")


# -- the gather ------------------------------------------------------------------------------------


@pytest.fixture
def store() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


def _info(store: dist.TCPStore, rank: int, world: int, run: str) -> RankInfo:
    return RankInfo(rank, world, rank, "127.0.0.1", store.port, run)


def test_exchange_brings_every_payload_to_rank_0(store: dist.TCPStore) -> None:
    got: dict[int, object] = {}
    threads = [threading.Thread(target=lambda r=r: got.__setitem__(r, exchange(_info(store, r, 3, "ok"), f"trace {r}", timeout=30)))
               for r in (2, 1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {0: ["trace 0", "trace 1", "trace 2"], 1: None, 2: None}


def test_a_rank_that_never_comes_is_named_after_the_timeout(store: dist.TCPStore) -> None:
    with pytest.raises(RankFailure) as e:
        exchange(_info(store, 0, 2, "late"), "trace 0", timeout=0.5)
    assert e.value.ranks == [1] and "rank 1 did not finish its step within 0.5 s" in str(e.value)


def test_a_failed_rank_is_named_on_rank_0_and_does_not_wait(store: dist.TCPStore) -> None:
    failed: list[BaseException] = []

    def rank1() -> None:
        try:
            exchange(_info(store, 1, 2, "fail"), None, "ValueError: bad batch", timeout=60)
        except RankFailure as e:
            failed.append(e)

    t = threading.Thread(target=rank1)
    t.start()
    with pytest.raises(RankFailure) as e:
        exchange(_info(store, 0, 2, "fail"), "trace 0", timeout=60)
    t.join(30)
    assert not t.is_alive() and failed
    assert e.value.ranks == [1] and "rank 1 failed: ValueError: bad batch" in str(e.value)


# -- capture: memory released under a recorded tensor ----------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (64, 64), (1500, 1500)])  # exact values, held and stacked, reduced at once
def test_a_tensor_whose_memory_was_released_is_described_without_reading_it(shape: tuple[int, ...]) -> None:
    # FSDP2 frees each unsharded parameter with untyped_storage().resize_(0) between its uses: reading one
    # then crashed the whole process (a segmentation fault), not a Python error.
    t = torch.randn(*shape)
    view = t[1:]
    t.untyped_storage().resize_(0)
    for x in (t, view):
        s = stats_of(x)
        assert s.shape == tuple(x.shape) and s.numel == 0 and s.norm is None


def test_cli_refuses_nproc_per_node_under_torchrun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(main, ["check", "--nproc-per-node", "2", str(script)])
    assert result.exit_code == 2 and "under torchrun, leave it out" in result.output


def test_html_is_one_page_for_every_rank() -> None:
    from gradtrace.distributed.output import multi_html

    m = _multi()
    page = multi_html(m, RenderOptions())
    # One page, every rank's trace in it, under its label (the rank selector's options).
    data = json.loads(re.search(r'<script type="application/json" id="gradtrace-data">(.*?)</script>', page, re.S).group(1))
    assert [t["label"] for t in data["traces"]] == ["rank 0", "rank 1"]
    nodes = [{n["k"] for n in t["data"]["nodes"]} for t in data["traces"]]
    assert nodes == [{n.key for n in r.trace.nodes} for r in m.ranks]


def test_rank_0_failing_does_not_wait_for_the_others(store: dist.TCPStore) -> None:
    # Rank 1 may be blocked in the script's own all-reduce, waiting for rank 0: rank 0 must not wait for it.
    with pytest.raises(RankFailure) as e:
        exchange(_info(store, 0, 2, "zero"), None, "KeyError: 'data'", timeout=300)
    assert e.value.ranks == [0] and "rank 0 failed: KeyError: 'data'" in str(e.value)


def test_every_rank_without_torchrun_says_it_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    script = tmp_path / "s.py"
    script.write_text("import torch\nw = torch.ones(2, requires_grad=True)\n(w * 3).sum().backward()\n")
    result = CliRunner().invoke(main, ["render", str(script), "-o", str(tmp_path / "s.json"), "--every-rank"])
    assert result.exit_code == 0, result.output
    assert "--every-rank applies only under torchrun" in result.output
    gradtrace.Trace.from_json((tmp_path / "s.json").read_text())  # one process: a plain single trace


def test_collective_table_shows_local_norms_per_rank_and_the_reduced_norm() -> None:
    from gradtrace.distributed.output import collective_table, reduced_norm

    m = _multi()
    local = [_local_grads(_batch(r)) for r in (0, 1)]
    mean = (local[0]["fc1.weight"] + local[1]["fc1.weight"]) / 2
    assert reduced_norm(m, "fc1.weight") == pytest.approx(float(mean.norm()), rel=1e-6)
    lines = collective_table(m).splitlines()
    assert lines[0].split()[:2] == ["parameter", "shape"] and "reduced" in lines[0]
    row = next(ln for ln in lines if ln.startswith("fc1.weight")).split()
    assert row[1:3] == ["(4,", "3)"]
    assert [float(x) for x in row[3:]] == pytest.approx([float(local[0]["fc1.weight"].norm()), float(local[1]["fc1.weight"].norm()),
                                                         float(mean.norm())], rel=1e-3)


def test_reduced_norm_of_shards_is_the_whole_gradients_norm() -> None:
    # FSDP2: each rank holds one shard of the reduced gradient; the whole norm follows from the shards' norms.
    m = _multi()
    g = torch.randn(4, 3)
    ranks = []
    for r in m.ranks:
        key = r.trace.find("fc1.weight")[0]
        shard = torch.chunk(g, 2, dim=0)[r.rank]
        ranks.append(RankTrace(r.rank, r.trace, (CollectiveGrad(key, "reduce_scatter", (4, 3), stats_of(shard), "(Shard(dim=0),)"),)))
    from gradtrace.distributed.output import reduced_norm

    assert reduced_norm(MultiTrace(tuple(ranks), 1, 2), "fc1.weight") == pytest.approx(float(g.norm()), rel=1e-6)


def test_a_multi_rank_file_loads_checks_and_renders_without_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "m.json"
    path.write_text(_multi(scales=(1.0, 300.0)).to_json())
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from gradtrace.distributed import MultiTrace
from gradtrace.distributed.output import collective_table, write_multi
from gradtrace.render.options import RenderOptions
from pathlib import Path
m = MultiTrace.from_json(open({str(path)!r}).read())
write_multi(m, Path({str(tmp_path / 'out.dot')!r}), "dot", RenderOptions(), every_rank=True)
print(sorted({{f.kind for _, f in m.findings()}}), len(collective_table(m).splitlines()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ,
                         "PYTHONPATH": str(Path(gradtrace.__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    assert "rank_imbalance" in out.stdout and out.stdout.split()[-1] == "5"
    assert (tmp_path / "out.rank1.dot").read_text().startswith("digraph")


def test_a_step_without_ddp_or_fsdp_says_whose_gradients_are_drawn(tmp_path: Path) -> None:
    from gradtrace.distributed.collective import CollectiveRecorder
    from gradtrace.script import run_script

    script = tmp_path / "plain.py"
    script.write_text("import torch\nw = torch.ones(3, requires_grad=True)\n(w * 2).sum().backward()\n")
    rec = CollectiveRecorder(world_size=2)
    trace, records = rec.records(run_script(script, on_session=rec.attach))
    assert records == ()
    assert any("no DistributedDataParallel or FSDP2" in n and "this rank's own" in n for n in trace.notes)
    [leaf] = [n for n in trace.nodes if n.kind != "op"]
    assert leaf.grads[0].values == (2.0, 2.0, 2.0)  # torch: d(sum(2w))/dw


def test_fsdp_state_that_cannot_be_read_leaves_the_record_out_with_a_note() -> None:
    from types import SimpleNamespace

    from gradtrace.distributed.collective import UNREAD_NOTE, CollectiveRecorder

    unsharded = nn.Parameter(torch.ones(2))

    class Broken:
        _unsharded_param = unsharded

        @property
        def sharded_param(self) -> None:
            raise AttributeError("renamed in a later torch")

    root = nn.Linear(2, 2)
    root._get_fsdp_state = lambda: SimpleNamespace(_fsdp_param_group=SimpleNamespace(fsdp_params=[Broken()]))  # type: ignore[attr-defined]
    session = SimpleNamespace(modules=SimpleNamespace(roots=[("", root)]))
    rec = CollectiveRecorder(world_size=2)
    rec._after_backward(session, {(1, "AccumulateGrad"): unsharded})  # type: ignore[arg-type]
    assert rec._found == {} and rec.notes == [UNREAD_NOTE]  # (not "no FSDP2 model took part": one did)


def test_the_same_nodes_in_another_backward_order_are_named() -> None:
    w1 = torch.tensor([1.0, 2.0], requires_grad=True)
    w2 = torch.tensor([3.0, 4.0], requires_grad=True)

    def first_a(x: torch.Tensor) -> torch.Tensor:
        a = (x * w1).exp()
        b = (x * w2).sin()
        return a.sum() + b.sum()

    def first_b(x: torch.Tensor) -> torch.Tensor:
        b = (x * w2).sin()
        a = (x * w1).exp()
        return a.sum() + b.sum()

    x = torch.tensor([0.5, -0.5])
    t0, t1 = gradtrace.trace(first_a, x), gradtrace.trace(first_b, x)
    sig = lambda t: sorted((n.kind, n.label, n.grad_fn or "") for n in t.nodes)  # noqa: E731
    assert sig(t0) == sig(t1)  # the same nodes ...
    m = MultiTrace((RankTrace(0, t0), RankTrace(1, t1)), 1, 2)
    found = [f for _, f in cross_rank_findings(m) if f.kind == "graph_differs"]
    assert len(found) == 1 and "in another order" in found[0].message  # ... visited in another order
    assert cross_rank_findings(MultiTrace((RankTrace(0, t0), RankTrace(1, gradtrace.trace(first_a, x))), 1, 2)) == []
