"""The replay page's layout follows the data flow: every edge goes down, whatever the module nesting.

A group whose members the parent's own ops connect (a ModuleList the parent loops over, a module
whose children the parent calls directly) must not be drawn as one box with the parent's ops
beside it: that draws a chain as parallel branches with edges running back up (tryout 01).
Positions are read from the page in Chromium; the edges are the trace's, checked against torch's
own autograd graph.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace

from .browser import chromium_page
from .test_html_replay import open_page


class ListMLP(nn.Module):
    """The commonest loop: Linear layers in a ModuleList, relu in the parent's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(4)])
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class Residual(nn.Module):
    """``x = x + blk(x)``: each block's input also skips past it, the add sits in the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + blk(x)
        return x


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.mlp = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1) @ self.v(x)
        x = self.norm(x + att)
        return x + self.mlp(x)


class Transformerish(nn.Module):
    """A block list looped over by the parent, with an embedding-like Linear before and a norm after."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.out(F.layer_norm(x, (6,)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)


class DirectCalls(nn.Module):
    """The parent calls the encoder's sub-layers itself: ``enc`` is never called, its members are joined by the parent's ops."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = Encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.enc.l1(x))
        h = torch.sigmoid(self.enc.l2(h)) * 2.0
        return self.enc.l3(h)


class Inner(nn.Module):
    """Called itself, but loops over a ModuleDict with functional ops between its members."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({"a": nn.Linear(6, 6), "b": nn.Linear(6, 6)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for key in ("a", "b"):
            x = torch.tanh(self.parts[key](x))
        return x


class Nested(nn.Module):
    """A tangled container one level down, a module called twice around a parent op, side taps summed into the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.shared = nn.Linear(6, 6)
        self.taps = nn.ModuleList([nn.Linear(6, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(F.relu(self.shared(self.inner(x))))
        aux = h.new_zeros(())
        for tap in self.taps:
            aux = aux + tap(h).mean()
            h = h * 0.5
        return h.sum(dim=-1) + aux


def sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))


CASES = {
    "modulelist-functional-relu": (ListMLP, (3, 6)),
    "residual-loop": (Residual, (3, 6)),
    "transformer-blocks": (Transformerish, (2, 3, 4)),
    "sequential": (sequential, (3, 5)),
    "parent-calls-sub-layers": (DirectCalls, (3, 5)),
    "nested-dict-shared-taps": (Nested, (3, 6)),
}

# The page's laid-out boxes of what shows, and its drawn edges, read back by item key.
READ = "() => window.gradtraceLayout()"


def upward(layout: dict) -> list[str]:
    """Every drawn edge whose source box does not end above its destination box (TB layout)."""
    box = layout["box"]
    bad = []
    for a, b in layout["edges"]:
        (ax, ay, aw, ah), (bx, by, bw, bh) = box[a], box[b]
        if not ay + ah <= by + 1e-6:
            bad.append(f"{a} (y {ay:.0f}..{ay + ah:.0f}) -> {b} (y {by:.0f})")
    return bad


@pytest.mark.parametrize("name", list(CASES))
def test_every_edge_goes_down_expanded_and_collapsed(name: str, tmp_path) -> None:
    make, shape = CASES[name]
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    t = gradtrace.trace(model, x, loss=lambda out: out.sum())
    params = {n.label for n in (t.node(k) for k in t.forward_order()) if n.kind == "param"}
    assert params == {name for name, _ in model.named_parameters()}, "the trace holds each of torch's parameters"
    with chromium_page() as page:
        errors, _ = open_page(page, t.render(tmp_path / f"{name}.html").as_uri())
        page.click("#expandall")
        full = page.evaluate(READ)
        # Expanded, every node shows on its own and every trace edge is drawn between its two ends.
        assert sorted(full["box"]) == sorted(t.forward_order())
        assert sorted(map(tuple, full["edges"])) == sorted({(e.src, e.dst) for e in t.edges})
        assert upward(full) == [], f"{name}, every group expanded: edges drawn upward"
        # Collapsed: the opening view, everything closed, and each depth opened in turn.
        page.click("#collapseall")
        assert upward(page.evaluate(READ)) == [], f"{name}, opening view"
        depth = 0
        while True:
            layout = page.evaluate(f"() => window.gradtraceLayout({depth})")
            assert upward(layout) == [], f"{name}, groups open to depth {depth}"
            if layout["closed"] == 0:
                break
            depth += 1
        assert errors == []


def test_a_loop_over_a_module_list_folds_with_the_ops_between_its_calls(tmp_path) -> None:
    """The ModuleList is dissolved (never called itself), its four calls fold into one ×4 box that
    holds the relus between them, and expanded the chain reads as a chain: one Linear per row band."""
    torch.manual_seed(0)
    model, x = ListMLP(), torch.randn(3, 6)
    t = gradtrace.trace(model, x, loss=lambda out: out.sum())
    relus = t.find("relu")
    assert len(relus) == 4
    with chromium_page() as page:
        errors, _ = open_page(page, t.render(tmp_path / "list.html").as_uri())
        top = page.evaluate("() => window.gradtraceLayout(0)")
        assert "fold:layers.0" in top["box"], sorted(top["box"])
        assert not set(relus) & set(top["box"]), "the relus between the calls fold with them"
        assert upward(top) == []
        page.click("#expandall")
        full = page.evaluate(READ)
        # torch's order of the chain: layer i's addmm, then relu i, then layer i+1's addmm; each strictly lower.
        addmm = [k for k in t.forward_order() if t.node(k).label == "addmm"][:4]
        chain = [k for pair in zip(addmm, relus) for k in pair]
        ys = [full["box"][k][1] for k in chain]
        assert ys == sorted(ys) and len(set(ys)) == len(ys), list(zip(chain, ys))
        assert errors == []
