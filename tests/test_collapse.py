"""Big traces drawn readably: module collapse, folded repeats, node budget, focus."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace.collapse import build_view, choose_view

from .models import GPT, ResNet


@pytest.fixture(scope="module")
def gpt12():
    torch.manual_seed(0)
    tok = torch.randint(0, 64, (2, 8))
    model = GPT(vocab=64, dim=16, layers=12, heads=2, context=8)
    return gradtrace.trace(model, tok, loss=lambda out: F.cross_entropy(out.flatten(0, 1), tok.flatten()))


def _items_cover_everything(trace, view):
    assert set(view.owner) == {n.key for n in trace.nodes}, "every node is shown, alone or inside a group"
    assert set(view.owner.values()) == set(view.items)


def test_depth_collapses_modules(gpt12):
    full = build_view(gpt12, depth=None, fold=False)
    assert len(full) == len(gpt12.nodes) and not full.blocks
    view = build_view(gpt12, depth=1, fold=False)
    _items_cover_everything(gpt12, view)
    paths = sorted(b.path for b in view.blocks.values())
    assert "h.0" in paths and "h.11" in paths and "ln_f.weight" not in paths
    block = view.blocks["module:h.3"]
    assert block.cls == "Block" and block.repeat == 1
    out = gpt12.node(block.output)
    assert out.label == "add" and out.module == "h.3", "the block's output is its last residual add"
    # The edge between two consecutive blocks carries the tensor's shape.
    assert ("module:h.2", "module:h.3", (2, 8, 16)) in view.edges
    src = gpt12.to_dot(depth=1, fold=False).source
    assert re.search(r'"module_h\.2" -> "module_h\.3" \[label="\(2, 8, 16\)"', src)
    label = next(ln for ln in src.splitlines() if ln.strip().startswith('"module_h.3" ['))
    assert "<B>h.3</B> <I>Block</I>" in label and "ops, " in label and "‖grad‖ entering" in label


def test_identical_layers_fold_with_per_block_norms(gpt12):
    view = build_view(gpt12, depth=None, fold=True)
    _items_cover_everything(gpt12, view)
    (fold,) = [b for b in view.blocks.values() if b.repeat > 1]
    assert fold.repeat == 12 and fold.paths[0] == "h.0" and fold.paths[-1] == "h.11"
    expected = []
    for i in range(12):
        inside = [k for k in gpt12.forward_order() if gpt12.node(k).module.startswith(f"h.{i}.") or gpt12.node(k).module == f"h.{i}"]
        out = [k for k in inside if gpt12.node(k).kind == "op"][-1]
        expected.append(gpt12.node(out).grad.norm)
    assert fold.block_grad_norms == expected
    src = gpt12.to_dot().source
    assert "×12" in src and "‖grad‖ per block" in src


def test_budget_collapses_and_says_so(gpt12):
    view = choose_view(gpt12, depth=None, max_nodes=60, fold=False, module=None)
    assert len(view) <= 60 and view.depth is not None
    assert "max_nodes=60" in view.note
    _items_cover_everything(gpt12, view)
    tight = choose_view(gpt12, depth=None, max_nodes=3, fold=False, module=None)
    assert len(tight) > 3 and "still" in tight.note and "nothing is dropped" in tight.note
    _items_cover_everything(gpt12, tight)
    assert "max_nodes=3" in gpt12.to_dot(max_nodes=3, fold=False).source


def test_focus_on_one_module(gpt12):
    view = build_view(gpt12, module="h.3")
    inside = {n.key for n in gpt12.nodes if n.module == "h.3" or n.module.startswith("h.3.")}
    assert inside <= set(view.items)
    assert view.boundary and all(gpt12.node(k).module != "h.3" and not gpt12.node(k).module.startswith("h.3.") for k in view.boundary)
    assert any(gpt12.node(k).module.startswith("h.2") for k in view.boundary), "what feeds h.3 is shown"
    assert any(gpt12.node(k).module.startswith("h.4") for k in view.boundary), "what reads h.3 is shown"
    assert len(view) == len(inside) + len(view.boundary)
    src = gpt12.to_dot(module="h.3").source
    assert "outside: h.2" in src and "module h.3 only" in src
    with pytest.raises(gradtrace.RenderError, match=r"no module 'h\.99'.*h\."):
        gpt12.to_dot(module="h.99")


def test_resnet_blocks_do_not_fold_across_shapes():
    torch.manual_seed(0)
    t = gradtrace.trace(ResNet(width=4), torch.randn(2, 3, 64, 64))
    view = build_view(t, depth=2)
    folds = [b.paths for b in view.blocks.values() if b.repeat > 1]
    # Stage 0's two blocks keep the width (no downsample): the same structure. Every later stage
    # opens with a strided, downsampling block, and stages differ in width: nothing else folds.
    assert folds == [["layer.0.0", "layer.0.1"]]


def test_bad_options():
    with pytest.raises(gradtrace.RenderError, match="depth"):
        gradtrace.RenderOptions(depth=-1)
    with pytest.raises(gradtrace.RenderError, match="max_nodes"):
        gradtrace.RenderOptions(max_nodes=0)


def test_48_layers_trace_and_render(tmp_path):
    torch.manual_seed(0)
    tok = torch.randint(0, 32, (1, 4))
    model = GPT(vocab=32, dim=8, layers=48, heads=2, context=4)
    t = gradtrace.trace(model, tok, loss=lambda out: F.cross_entropy(out.flatten(0, 1), tok.flatten()))
    assert len(t.nodes) > 2000
    src = t.to_dot(fold=False).source  # no fold: the budget must collapse it
    assert "max_nodes=250" in src
    assert t.to_dot().source.count("×48") >= 1


@pytest.mark.dot
def test_48_layers_svg(tmp_path):
    torch.manual_seed(0)
    tok = torch.randint(0, 32, (1, 4))
    model = GPT(vocab=32, dim=8, layers=48, heads=2, context=4)
    t = gradtrace.trace(model, tok, loss=lambda out: F.cross_entropy(out.flatten(0, 1), tok.flatten()))
    out = t.render(tmp_path / "gpt48.svg", fold=False)
    assert out.stat().st_size > 10_000


# -- graphs without modules, and scale ---------------------------------------------------------

def _chain_trace(n: int):
    """x -> mul -> mul -> ... (n ops), built from records: a flat graph with no modules at all."""
    from gradtrace.records import TensorStats, TraceEdge, TraceNode

    st = TensorStats((), "float32", "cpu", 1, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 0, (1.0,))
    nodes = [TraceNode(key="leaf0", kind="leaf", label="x", values=(st,), grads=(st,), backward_step=n)]
    edges = []
    for i in range(n):
        nodes.append(TraceNode(key=f"op{i}", kind="op", label="mul", grad_fn="MulBackward0", values=(st,), grads=(st,),
                               forward_step=i, backward_step=n - 1 - i))
        edges.append(TraceEdge("leaf0" if i == 0 else f"op{i - 1}", f"op{i}"))
    return gradtrace.Trace(tuple(nodes), tuple(edges), f"op{n - 1}")


def test_module_less_graph_honours_max_nodes():
    from gradtrace.collapse import choose_view

    t = _chain_trace(3000)
    view = choose_view(t, None, 250, True, None)
    assert len(view) <= 250
    assert "runs of top-level ops folded" in view.note and "raise max_nodes" in view.note
    # nothing dropped: every node is shown by exactly one item, and runs follow the data flow
    assert set(view.owner) == {n.key for n in t.nodes}
    assert all(view.owner[k] in view.items for k in view.owner)
    position = {item: i for i, item in enumerate(view.items)}
    assert all(position[a] < position[b] for a, b, _ in view.edges)
    assert len(view.edges) == len(view) - 1  # still one chain


@pytest.mark.dot
def test_module_less_graph_draws_within_budget(tmp_path):
    out = _chain_trace(3000).render(tmp_path / "chain.svg", timeout=60)
    assert out.read_bytes().count(b'class="node"') <= 251  # (+ the legend)


def test_depth_on_a_flat_model_says_why():
    t = gradtrace.trace(lambda x: (x * x).exp().sum(), torch.randn(3, requires_grad=True))
    assert "depth=1 collapses nothing: the trace has no modules" in t.to_dot(depth=1).source
    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    t = gradtrace.trace(net, torch.randn(1, 2))
    assert "its modules nest only 1 level deep" in t.to_dot(depth=1).source
    assert "collapses nothing" not in t.to_dot(depth=0).source


def test_text_table_is_linear():
    """50k nodes: the table took minutes (a set rebuilt per node); now a couple of seconds."""
    import time

    from gradtrace.render.text import to_text

    t = _chain_trace(50_000)
    start = time.perf_counter()
    out = to_text(t)
    assert time.perf_counter() - start < 30
    assert out.count("\n") == 50_002 and out.splitlines()[1].startswith("0 ")


def test_unknown_module_names_the_nearest_and_those_at_its_depth(gpt12):
    """``h.99`` in a 12-layer model: the message lists h.0 … h.11 (numeric order), not 8 names
    from h.0 only; a misspelling names the nearest path."""
    with pytest.raises(gradtrace.RenderError) as e:
        gpt12.to_dot(module="h.99")
    msg = str(e.value)
    layers = re.findall(r"\bh\.(\d+)\b(?!\.)", msg)
    assert {str(i) for i in range(12)} <= set(layers), msg
    assert msg.index("h.2,") < msg.index("h.10"), "numeric order"
    with pytest.raises(gradtrace.RenderError, match=r"nearest: h\.3\.attn"):
        gpt12.to_dot(module="h.3.atn")


def test_text_table_with_a_module_lists_only_its_rows(gpt12):
    from gradtrace.render.text import to_text

    inside = {n.key for n in gpt12.nodes if n.module == "h.1" or n.module.startswith("h.1.")}
    out = to_text(gpt12, gradtrace.RenderOptions(module="h.1", show_grads=False))
    rows = out.splitlines()
    assert rows[0] == f"module h.1 only: {len(inside)} of {len(gpt12.nodes)} nodes"
    table = [r for r in rows[2:] if r and not r.startswith(("note:", "optimizer", "  "))]
    assert len(table) == len(inside)
    assert all(re.search(r"\sh\.1(\.\w+)*\s", r) for r in table), table
    with pytest.raises(gradtrace.RenderError, match=r"no module 'h\.99'"):
        to_text(gpt12, gradtrace.RenderOptions(module="h.99"))


# -- repeated calls of one module: an RNN cell unrolled over time steps --------------------------

class _Unrolled(nn.Module):
    """``cell`` called once per time step, each call feeding the next (backprop through time)."""

    def __init__(self, cell: nn.Module, hidden: int) -> None:
        super().__init__()
        self.cell, self.head, self.hidden = cell, nn.Linear(hidden, 1), hidden

    def forward(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        h = torch.zeros(x.shape[1], self.hidden)
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.head(h).sum()


def _rnn(steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = _Unrolled(nn.RNNCell(4, 8), 8)
    x = torch.randn(steps, 3, 4)
    return model, x


def _dot_nodes(src: str) -> list[str]:
    """The node statements of a DOT source (the legend aside)."""
    found = [re.match(r'\s*("(?:[^"\\]|\\.)*"|\w+) \[', ln) for ln in src.splitlines()]
    return [m.group(1) for m in found if m and m.group(1) not in ("graph", "node", "edge", "legend")]


def test_rnn_cell_unrolled_200_steps_folds_into_one_item():
    model, x = _rnn(200)
    t = gradtrace.trace(model, x)
    assert len(t.nodes) > 1200
    view = choose_view(t, depth=None, max_nodes=250, fold=True, module=None)
    _items_cover_everything(t, view)
    (fold,) = [b for b in view.blocks.values() if b.repeat > 1]
    assert fold.repeat == 200 and fold.paths[0] == "cell" and fold.paths[-1] == "cell#200"
    assert fold.path == "cell (calls 1–200)" and fold.cls == "RNNCell"
    # The cell's four weights are read by every call: folded with them, counted as shared, not per call.
    assert fold.shared == 4 and {t.node(k).label for k in fold.members if t.node(k).kind == "param"} == {
        "cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh"}
    assert len(view) < 12, view.items
    src = t.to_dot().source
    nodes = _dot_nodes(src)
    assert len(nodes) == len(view) and len(nodes) <= 250
    assert "<B>cell (calls 1–200)</B> <I>RNNCell</I> <B>×200</B>" in src
    assert "6 ops each, 4 parameters shared by all" in src


@pytest.mark.dot
def test_rnn_cell_unrolled_200_steps_svg(tmp_path):
    """The SVG itself: Graphviz lays out the folded loop (it timed out at 120 s unfolded)."""
    model, x = _rnn(200)
    t = gradtrace.trace(model, x)
    svg = t.render(tmp_path / "rnn.svg").read_text()
    assert svg.count('class="node"') == len(choose_view(t, None, 250, True, None)) + 1  # and the legend
    width, height = (float(v) for v in re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups())
    assert height < 2000, "one folded item, not 200 boxes stacked (18,000 pt)"


def test_folded_calls_carry_their_members_values_and_gradients():
    """The fold's output and its per-call gradient norms are the calls' own, as torch computes them."""
    steps = 200
    model, x = _rnn(steps)
    t = gradtrace.trace(model, x)
    hs: list[torch.Tensor] = []
    model.zero_grad()
    model(x, keep=hs).backward()  # torch alone, the oracle
    fold = next(b for b in build_view(t).blocks.values() if b.repeat > 1)
    assert len(fold.block_grad_norms) == steps
    for i in (0, 1, steps // 2, steps - 1):  # the first call, the last, and two between
        assert fold.block_grad_norms[i] == pytest.approx(hs[i].grad.norm().item(), rel=1e-5, abs=1e-30), i
    out = t.node(fold.output)
    assert out.scope == "cell#200" and out.label == "tanh"
    assert out.value.mean == pytest.approx(hs[-1].mean().item(), rel=1e-5)
    assert out.grad.norm == pytest.approx(hs[-1].grad.norm().item(), rel=1e-5)
    first = [k for k in fold.members if t.node(k).scope == "cell" and t.node(k).kind == "op"][-1]
    assert t.node(first).value.norm == pytest.approx(hs[0].norm().item(), rel=1e-5)
    # The shared weights' gradient is the sum over every time step: torch's .grad.
    w = next(k for k in fold.members if t.node(k).label == "cell.weight_hh")
    assert t.node(w).grad.norm == pytest.approx(model.cell.weight_hh.grad.norm().item(), rel=1e-5)


def test_no_fold_shows_every_call():
    model, x = _rnn(30)
    t = gradtrace.trace(model, x)
    full = build_view(t, depth=None, fold=False)
    assert len(full) == len(t.nodes) and not full.blocks
    assert len(_dot_nodes(t.to_dot(fold=False, max_nodes=None).source)) == len(t.nodes)
    assert len(build_view(t, depth=None, fold=True)) < 10


class _CatCell(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(12, 8), nn.Tanh()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(torch.cat([x, h], dim=1)))


@pytest.mark.parametrize("make", [
    lambda: nn.LSTMCell(4, 8), lambda: nn.GRUCell(4, 8),
    lambda: _CatCell(),  # a cell with submodules: scopes rnn.cell#2.lin, rnn.cell#2.act
], ids=["lstm", "gru", "submodules"])
def test_other_cells_fold_their_calls(make):
    torch.manual_seed(1)
    cell = make()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.Module()
            self.rnn.cell = cell  # nested one level: the calls are siblings under rnn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.zeros(x.shape[1], 8)
            c = torch.zeros(x.shape[1], 8)
            for t in range(x.shape[0]):
                if isinstance(cell, nn.LSTMCell):
                    h, c = cell(x[t], (h, c))
                elif isinstance(cell, nn.GRUCell):
                    h = cell(x[t], h)
                else:
                    h = cell(x[t], h)
            return h.pow(2).mean()

    t = gradtrace.trace(Net(), torch.randn(40, 3, 4))
    view = build_view(t)
    _items_cover_everything(t, view)
    (fold,) = [b for b in view.blocks.values() if b.repeat > 1]
    if isinstance(cell, _CatCell):
        # Its first call's cat reads x and a zero state, neither requiring grad: no autograd node, so
        # call 1 has one op less and stays apart (with the weights, which sit in the module's first call).
        assert fold.repeat == 39 and fold.path == "rnn.cell (calls 2–40)" and fold.shared == 0
        assert t.find("rnn.cell.lin.weight")[0] in view.items
    else:
        assert fold.repeat == 40 and fold.path == "rnn.cell (calls 1–40)"
        assert fold.shared == len(list(cell.parameters()))
    assert len(view) < 10


def test_calls_that_do_not_feed_each_other_do_not_fold():
    """A siamese encoder applied to two inputs: same module, same ops, but side by side, not a chain."""
    torch.manual_seed(0)

    class Siamese(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (self.enc(a) - self.enc(b)).pow(2).sum()

    t = gradtrace.trace(Siamese(), torch.randn(2, 4), torch.randn(2, 4))
    assert not [b for b in build_view(t).blocks.values() if b.repeat > 1]


class _Steps(nn.Module):
    """Loops whose time step is more than one bare call of the cell."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.emb, self.cell, self.head = nn.Embedding(10, 4), nn.RNNCell(4, 8), nn.Linear(8, 2)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        e = self.emb(tok)  # (batch, steps, 4): each step reads e[:, t], an op outside the cell
        h = torch.zeros(tok.shape[0], 8)
        outs = []
        for t in range(tok.shape[1]):
            h = self.cell(e[:, t], h)
            if self.kind == "glue":
                h = h * 0.9  # an op between two calls
            if self.kind == "head":
                outs.append(self.head(h))  # a second module called at every step
        return torch.stack(outs).sum() if outs else self.head(h).sum()


@pytest.mark.parametrize("kind,path,repeat", [
    ("plain", "cell (calls 1–150)", 150),
    ("glue", "cell (calls 2–150)", 149),  # h * 0.9 joins the call it feeds: call 1 has none before it
    ("head", "cell + head (calls 1–150)", 150),
])
def test_loop_steps_fold_with_their_loose_ops_and_other_calls(kind, path, repeat):
    torch.manual_seed(0)
    model = _Steps(kind)
    tok = torch.randint(0, 10, (3, 150))
    t = gradtrace.trace(model, tok)
    view = choose_view(t, depth=None, max_nodes=250, fold=True, module=None)
    _items_cover_everything(t, view)
    (fold,) = [b for b in view.blocks.values() if b.repeat > 1]
    assert (fold.path, fold.repeat) == (path, repeat)
    assert len(view) <= 30 and not view.note, (len(view), view.note)  # from over 1,000 nodes
    selects = [k for k in t.forward_order() if t.node(k).label == "select"]
    assert len(selects) == 150 and sum(view.owner[k] == fold.key for k in selects) >= repeat - 1, "x[t] folds with its step"
    # per-step gradient norms are torch's: the gradient reaching each step's output h_t
    e = model.emb(tok).detach().requires_grad_()
    h, cs = torch.zeros(3, 8), []
    outs = []
    for i in range(tok.shape[1]):
        h = model.cell(e[:, i], h)
        h.retain_grad()
        cs.append(h)  # the cell's output at step i: what leaves the folded step
        if kind == "glue":
            h = h * 0.9
        if kind == "head":
            outs.append(model.head(h))
    (torch.stack(outs).sum() if outs else model.head(h).sum()).backward()
    src = t.to_dot().source
    assert len(_dot_nodes(src)) == len(view)
    if kind != "head":  # (with a head per step, the step's output is the head's, not h_t)
        first = 150 - repeat
        assert fold.block_grad_norms[0] == pytest.approx(cs[first].grad.norm().item(), rel=1e-5, abs=1e-30)
        assert fold.block_grad_norms[-1] == pytest.approx(cs[-1].grad.norm().item(), rel=1e-5)


def test_residual_stream_loop_folds_its_layers():
    """``for blk in self.blocks: x = x + tanh(blk(x))``: the tanh and the add are the parent's own
    ops, between two layers of a ModuleList that is never called itself; each joins its layer."""
    torch.manual_seed(0)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(24)])
            self.out = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
            for b in self.blocks:
                x = x + torch.tanh(b(x))
                if keep is not None:
                    x.retain_grad()
                    keep.append(x)
            return self.out(x).sum()

    model, x = Res(), torch.randn(3, 8)
    t = gradtrace.trace(model, x)
    view = build_view(t)
    _items_cover_everything(t, view)
    (fold,) = [b for b in view.blocks.values() if b.repeat > 1]
    assert fold.repeat == 24 and fold.path == "blocks.0 … blocks.23" and len(view) < 10
    assert {t.node(k).label for k in fold.members if not t.node(k).module} == {"tanh", "add"}
    xs: list[torch.Tensor] = []
    model(x, keep=xs).backward()
    assert fold.block_grad_norms[0] == pytest.approx(xs[0].grad.norm().item(), rel=1e-5)
    assert fold.block_grad_norms[-1] == pytest.approx(xs[-1].grad.norm().item(), rel=1e-5)


def test_distinct_layers_in_a_sequential_do_not_fold_in_pairs():
    """Linear, Sigmoid, Linear, Sigmoid …: each layer is its own module; only a loop's step folds
    several siblings as one unit (the docs' vanishing-gradient diagram shows them layer by layer)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    t = gradtrace.trace(nn.Sequential(*layers, nn.Linear(8, 1)), torch.randn(3, 8))
    assert not [b for b in build_view(t).blocks.values() if b.repeat > 1]
