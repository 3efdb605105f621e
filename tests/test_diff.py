"""Comparing two traces: matching and the numbers, with torch as the oracle.

Every ratio ``Trace.diff`` reports is checked against the same ratio computed here from torch
tensors (module outputs caught by forward hooks on an independent copy of the model, their
gradients by ``retain_grad``, parameter updates by reading the weights before and after
``step()``), never against gradtrace's own numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace import Trace
from gradtrace.diff import NothingMatched, TraceDiff, log2_ratio
from gradtrace.diff.align import DP_CELLS, align

from .models import GPT, SmallCNN


class Net(nn.Module):
    """Linear, ReLU (a module, so a hook sees its output), Linear, log-softmax."""

    def __init__(self, n_in: int = 6, hidden: int = 8, n_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc2(self.act(self.fc1(x))), dim=1)


class Stack(nn.Module):
    """A Sequential of layers; ``extra`` inserts a Linear and a Tanh in the middle (a code change)."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(6, 8), nn.ReLU()]
        if extra:
            layers += [nn.Linear(8, 8), nn.Tanh()]
        layers += [nn.Linear(8, 3)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.layers(x), dim=1)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(out, y)


def reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None, autocast: bool = False,
              loss=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (its output, the loss's gradient with respect to it), and each parameter's
    (value, grad), from plain torch on a copy of ``net``."""
    net = copy.deepcopy(net)
    outs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, out):
            out.retain_grad()
            outs[name] = out
        return hook

    for name, m in net.named_modules():
        if name:
            m.register_forward_hook(keep(name))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(x)
        value = loss_fn(out, y) if loss is None else loss(out)
    value.backward()
    ref = {name: (t.detach(), t.grad) for name, t in outs.items()}
    ref.update({name: (p.detach(), p.grad) for name, p in net.named_parameters()})
    return ref


def norm(t: torch.Tensor) -> float:
    return float(t.double().norm())


def rms(t: torch.Tensor) -> float:
    return norm(t) / math.sqrt(t.numel())


def change(d: TraceDiff, label: str, scope: str):
    (c,) = [c for c in d.changes if c.label == label and c.scope == scope]
    return c


def close_log2(shown: float | None, expected: float, tol: float = 1e-5) -> bool:
    """``shown`` is log2(B/A); compare the ratios themselves, to a relative tolerance."""
    return shown is not None and math.isclose(2.0**shown, 2.0**expected, rel_tol=tol)


def data(seed: int = 0, n: int = 5, n_in: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g), torch.randint(0, 3, (n,), generator=g)


def traced(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Trace:
    return gradtrace.trace(net, x, loss=lambda out: loss_fn(out, y))


# -- identical -------------------------------------------------------------------------------


def test_identical_traces_all_ratios_one_no_structural_difference():
    net = Net()
    x, y = data()
    a, b = traced(net, x, y), traced(net, x, y)
    assert [n.key for n in a.nodes] == [n.key for n in b.nodes]
    d = a.diff(b)
    assert len(d.changes) == len(a.nodes) and d.same_structure
    assert d.only_a == d.only_b == d.modules_only_a == d.modules_only_b == ()
    for c in d.changes:
        assert c.a == c.b
        assert c.grad_log2 in (0.0, None) and c.rms_log2 in (0.0, None), c
        assert c.nonfinite == () and not c.reshaped
    assert [c.size for c in d.largest()] == [0.0] * len(d.changes)
    # What a saved trace compares as: the same (the file keeps every number exactly).
    again = Trace.from_json(a.to_json())
    assert all(c.grad_log2 in (0.0, None) for c in a.diff(again).changes)


def test_matching_does_not_rely_on_node_keys():
    """Keys are capture-order names: rename every one and the matching is unchanged."""
    x, y = data()
    a = traced(Net(), x, y)
    rename = {n.key: f"zz{i}_{n.key}" for i, n in enumerate(reversed(a.nodes))}
    b = Trace(nodes=tuple(dataclasses.replace(n, key=rename[n.key]) for n in reversed(a.nodes)),
              edges=tuple(dataclasses.replace(e, src=rename[e.src], dst=rename[e.dst]) for e in a.edges),
              loss=rename[a.loss], modules=a.modules)
    d = a.diff(b)
    assert sorted((c.a, c.b) for c in d.changes) == sorted(rename.items())
    assert d.same_structure


# -- step 1 against step 50 ------------------------------------------------------------------


def test_step1_vs_step50_ratios_equal_torch():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    traces, refs, updates = {}, {}, {}
    for step in range(1, 51):
        x, y = data(seed=step)
        if step in (1, 50):
            refs[step] = reference(net, x, y)
            before = {name: p.detach().clone() for name, p in net.named_parameters()}
            with gradtrace.capture(net) as cap:
                opt.zero_grad()
                loss_fn(net(x), y).backward()
                opt.step()
            traces[step] = cap.trace
            updates[step] = {name: norm(p.detach() - before[name]) / norm(before[name]) for name, p in net.named_parameters()}
        else:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
    d = traces[1].diff(traces[50])
    assert d.same_structure and len(d.changes) == len(traces[1].nodes)
    r1, r50 = refs[1], refs[50]
    checked = 0
    for label, scope, module in (("addmm", "fc1", "fc1"), ("relu", "act", "act"), ("addmm", "fc2", "fc2")):
        c = change(d, label, scope)
        assert close_log2(c.grad_log2, math.log2(norm(r50[module][1]) / norm(r1[module][1]))), (label, scope)
        assert close_log2(c.rms_log2, math.log2(rms(r50[module][0]) / rms(r1[module][0]))), (label, scope)
        checked += 1
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        (c,) = [c for c in d.params if c.label == name]
        assert close_log2(c.grad_log2, math.log2(norm(r50[name][1]) / norm(r1[name][1]))), name
        assert close_log2(c.rms_log2, math.log2(rms(r50[name][0]) / rms(r1[name][0]))), name
        # Momentum makes step 50's update unlike step 1's: the update ratio's change is shown.
        assert close_log2(c.update_log2, math.log2(updates[50][name] / updates[1][name]), 1e-4), name
        checked += 1
    assert checked == 7
    # Sorted by |log2| of the largest of the three ratios, largest first.
    sizes = [c.size for c in d.largest()]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0


# -- fp32 against bf16 autocast --------------------------------------------------------------


def test_fp32_vs_bf16_autocast_matches_across_dtype_and_casts():
    torch.manual_seed(0)
    net = Net()
    x, y = data()
    a = traced(net, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = traced(net, x, y)
    d = a.diff(b)
    assert d.only_a == (), "every fp32 node has its bf16 counterpart"
    extra = [b.node(k) for k in d.only_b]
    assert extra and {n.label for n in extra} == {"to_copy"}, "only the casts autocast inserts are new"
    assert not d.modules_only_a and not d.modules_only_b
    recast = {(c.label, c.scope): (c.dtype_a, c.dtype_b) for c in d.reshaped}
    assert recast[("addmm", "fc1")] == ("float32", "bfloat16") and recast[("addmm", "fc2")] == ("float32", "bfloat16")
    ra, rb = reference(net, x, y), reference(net, x, y, autocast=True)
    for label, scope in (("addmm", "fc1"), ("relu", "act"), ("addmm", "fc2")):
        c = change(d, label, scope)
        assert close_log2(c.grad_log2, math.log2(norm(rb[scope][1]) / norm(ra[scope][1])), 1e-4), (label, scope)
        assert close_log2(c.rms_log2, math.log2(rms(rb[scope][0]) / rms(ra[scope][0])), 1e-4), (label, scope)
    for name in ("fc1.weight", "fc2.bias"):
        (c,) = [c for c in d.params if c.label == name]
        assert close_log2(c.grad_log2, math.log2(norm(rb[name][1]) / norm(ra[name][1])), 1e-4), name


# -- before and after a code change ----------------------------------------------------------


def _stacks() -> tuple[Stack, Stack]:
    torch.manual_seed(0)
    a, b = Stack(), Stack(extra=True)
    b.layers[0].load_state_dict(a.layers[0].state_dict())
    b.layers[4].load_state_dict(a.layers[2].state_dict())
    return a, b


def test_inserted_layer_is_named_and_the_rest_still_matched():
    a_net, b_net = _stacks()
    x, y = data()
    a, b = traced(a_net, x, y), traced(b_net, x, y)
    d = a.diff(b)
    assert d.modules_only_b == ("layers.2", "layers.3") and d.modules_only_a == ()
    assert ("layers.2", "layers.4") in d.module_pairs, "A's last layer is B's last layer, though its index moved"
    assert d.only_a == (), "nothing of A is lost"
    new = {(b.node(k).label, b.node(k).module) for k in d.only_b}
    assert new == {("t", "layers.2"), ("addmm", "layers.2"), ("layers.2.weight", "layers.2"), ("layers.2.bias", "layers.2"),
                   ("tanh", "layers.3")}
    (last_w,) = [c for c in d.params if c.label == "layers.4.weight"]
    assert a.node(last_w.a).label == "layers.2.weight"
    ra, rb = reference(a_net, x, y), reference(b_net, x, y)
    c = change(d, "addmm", "layers.4")
    assert a.node(c.a).module == "layers.2"
    assert close_log2(c.grad_log2, math.log2(norm(rb["layers.4"][1]) / norm(ra["layers.2"][1])))
    assert close_log2(c.rms_log2, math.log2(rms(rb["layers.4"][0]) / rms(ra["layers.2"][0])))
    c = change(d, "addmm", "layers.0")
    assert close_log2(c.grad_log2, math.log2(norm(rb["layers.0"][1]) / norm(ra["layers.0"][1])))
    # The same comparison the other way round: the layer is removed, the rest still matched.
    back = b.diff(a)
    assert back.modules_only_a == ("layers.2", "layers.3") and back.only_b == ()
    assert sorted(back.only_a) == sorted(d.only_b)


class Scaled(nn.Module):
    """Net with an op added inside fc1's scope in one version: ``(fc1(x) * 2)`` in a module of its own."""

    def __init__(self, double: bool) -> None:
        super().__init__()
        self.double = double
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.head = Head(double)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(torch.relu(self.fc1(x))))


class Head(nn.Module):
    def __init__(self, double: bool) -> None:
        super().__init__()
        self.double = double

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.double:
            h = h * 2.0
        return F.log_softmax(h.tanh(), dim=1)


def test_an_op_added_inside_a_module_is_the_only_difference():
    torch.manual_seed(0)
    a_net = Scaled(False)
    b_net = copy.deepcopy(a_net)
    b_net.head.double = True
    x, y = data()
    a, b = traced(a_net, x, y), traced(b_net, x, y)
    d = a.diff(b)
    assert [(b.node(k).label, b.node(k).module) for k in d.only_b] == [("mul", "head")]
    assert d.only_a == () and not d.modules_only_a and not d.modules_only_b
    assert len(d.changes) == len(a.nodes)
    # Upstream of the new op the forward is the same; the gradients reaching it are not.
    assert change(d, "addmm", "fc1").rms_log2 == 0.0
    assert change(d, "tanh", "head").rms_log2 != 0.0


# -- the other cases -------------------------------------------------------------------------


def test_unrelated_models_say_nothing_matched():
    x, y = data()
    a = traced(Net(), x, y)
    b = gradtrace.trace(SmallCNN(), torch.randn(2, 1, 8, 8), loss=lambda out: out.sum())
    with pytest.raises(NothingMatched, match="nothing matched") as e:
        a.diff(b)
    assert "fc1.weight" in str(e.value) and "conv.weight" in str(e.value)
    assert isinstance(e.value, gradtrace.GradtraceError)


def test_nan_in_one_trace_only_is_flagged_and_listed_first():
    torch.manual_seed(0)
    net = Net()
    x, y = data()
    bad = x.clone()
    bad[2, 1] = float("nan")
    a, b = traced(net, x, y), traced(net, bad, y)
    d = a.diff(b)
    flagged = [c for c in d.changes if c.nonfinite]
    assert flagged and d.largest(len(flagged)) == sorted(flagged, key=lambda c: d.largest().index(c))
    assert {c.label for c in d.largest(len(flagged))} == {c.label for c in flagged}
    inp = next(c for c in d.changes if c.kind == "input")
    assert inp.nonfinite == ("NaN in B's value only",)
    assert any("NaN in B's gradient only" in c.nonfinite for c in flagged)
    assert d.beyond(1e9), "NaN/inf in one trace only exceeds any factor"
    back = b.diff(a)
    assert next(c for c in back.changes if c.kind == "input").nonfinite == ("NaN in A's value only",)


def test_multi_output_nodes_compare_their_joint_gradient_norm():
    """A node with several outputs (chunk) is compared by the norm of all its gradients together."""

    class Chunky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 8)

        def forward(self, x):
            p, q = self.fc(x).chunk(2, dim=1)
            return F.log_softmax(p * q.sigmoid(), dim=1)

    torch.manual_seed(0)
    net = Chunky()
    x1, y1 = data(1)
    x2, y2 = data(2)
    y1, y2 = y1.clamp(max=3), y2.clamp(max=3)

    def ref(x, y):
        h = copy.deepcopy(net).fc(x)
        p, q = h.chunk(2, dim=1)
        for t in (p, q):
            t.retain_grad()
        loss_fn(F.log_softmax(p * q.sigmoid(), dim=1), y).backward()
        return math.sqrt(norm(p.grad) ** 2 + norm(q.grad) ** 2)

    a, b = traced(net, x1, y1), traced(net, x2, y2)
    (split,) = [c for c in a.diff(b).changes if len(a.node(c.a).grads) == 2]
    assert close_log2(split.grad_log2, math.log2(ref(x2, y2) / ref(x1, y1)))


def test_log2_ratio_edges():
    assert log2_ratio(2.0, 8.0) == 2.0 and log2_ratio(8.0, 2.0) == -2.0
    assert log2_ratio(0.0, 0.0) == 0.0 and log2_ratio(0.0, 1.0) == math.inf and log2_ratio(1.0, 0.0) == -math.inf
    assert log2_ratio(None, 1.0) is None and log2_ratio(1.0, math.nan) is None
    assert log2_ratio(1e-300, 1e300) == pytest.approx(math.log2(1e300) - math.log2(1e-300)), "no overflow of the quotient"


def test_diff_refuses_what_is_not_a_trace():
    x, y = data()
    a = traced(Net(), x, y)
    with pytest.raises(gradtrace.GradtraceError, match="must be a gradtrace.Trace"):
        a.diff("b.json")  # type: ignore[arg-type]
    with pytest.raises(gradtrace.GradtraceError, match="at least 1"):
        a.diff(a).beyond(0.5)


# -- alignment -------------------------------------------------------------------------------


def test_align_pairs_equal_items_in_order_around_insertions():
    assert align(["t", "addmm"], ["to_copy", "to_copy", "t", "addmm"]) == [(0, 2), (1, 3)]
    assert align("abcde", "abXcde") == [(0, 0), (1, 1), (2, 3), (3, 4), (4, 5)]
    assert align("abcde", "acde") == [(0, 0), (2, 1), (3, 2), (4, 3)]
    assert align("", "abc") == [] and align("abc", "xyz") == []
    # Equal tokens: the bonus decides which one is new.
    assert align("LL", "LLL", lambda i, j: int((i, j) in {(0, 0), (1, 2)}), full=1) == [(0, 0), (1, 2)]


def test_align_long_sequences_fall_back_and_stay_correct():
    n = int(math.sqrt(DP_CELLS)) + 100
    a = [f"op{i % 7}" for i in range(n)]
    b = a[: n // 2] + ["new"] + a[n // 2 + 1:] + ["tail"]  # one item replaced, one appended
    pairs = align(a, b, lambda i, j: int(i == j), full=1)
    assert all(a[i] == b[j] for i, j in pairs)
    assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in zip(pairs, pairs[1:]))
    assert len(pairs) == n - 1


def test_ratios_hold_across_batch_sizes():
    """A last batch smaller than the rest: the gradient norm and the value RMS (a per-element
    magnitude) change differently, and each ratio is torch's."""
    torch.manual_seed(0)
    net = Net()
    (x1, y1), (x2, y2) = data(1, n=5), data(2, n=9)
    d = traced(net, x1, y1).diff(traced(net, x2, y2))
    assert d.only_a == d.only_b == () and {c.shape_b[0] for c in d.reshaped if c.kind == "op" and c.shape_b} == {9}
    r1, r2 = reference(net, x1, y1), reference(net, x2, y2)
    for label, scope in (("addmm", "fc1"), ("relu", "act"), ("addmm", "fc2")):
        c = change(d, label, scope)
        assert close_log2(c.grad_log2, math.log2(norm(r2[scope][1]) / norm(r1[scope][1]))), (label, scope)
        assert close_log2(c.rms_log2, math.log2(rms(r2[scope][0]) / rms(r1[scope][0]))), (label, scope)
        assert not close_log2(c.rms_log2, math.log2(norm(r2[scope][0]) / norm(r1[scope][0]))), "RMS, not norm"


def test_a_block_appended_to_a_module_list_is_named_with_all_its_submodules():
    """Nested modules (block > attn > qkv) in an nn.ModuleList: B has one more block."""
    torch.manual_seed(0)
    a_net, b_net = GPT(layers=2), GPT(layers=3)
    b_net.load_state_dict(a_net.state_dict(), strict=False)
    idx = torch.randint(0, 64, (2, 8))

    def lm_loss(out):
        return out.logsumexp(-1).mean()

    a, b = (gradtrace.trace(net, idx, loss=lm_loss) for net in (a_net, b_net))
    d = a.diff(b)
    assert d.only_a == () and d.modules_only_a == ()
    assert set(d.modules_only_b) == {m for m, _ in b_net.named_modules() if m.startswith("h.2")}
    assert {b.node(k).module.split(".")[:2] == ["h", "2"] for k in d.only_b} == {True}
    assert all(x == y for x, y in d.module_pairs), "the first two blocks keep their paths"
    ra, rb = reference(a_net, idx, None, loss=lm_loss), reference(b_net, idx, None, loss=lm_loss)
    for module, label in (("h.1.attn.qkv", "addmm"), ("ln_f", "native_layer_norm"), ("h.0.mlp.0", "addmm")):
        c = change(d, label, module)
        assert close_log2(c.grad_log2, math.log2(norm(rb[module][1]) / norm(ra[module][1])), 1e-4), module
        assert close_log2(c.rms_log2, math.log2(rms(rb[module][0]) / rms(ra[module][0])), 1e-4), module


class Wrapper(nn.Module):
    """What DistributedDataParallel does to module paths: the model becomes ``module``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_a_model_wrapped_in_one_trace_only_still_matches():
    torch.manual_seed(0)
    net = Net()
    x, y = data()
    plain, wrapped = traced(net, x, y), traced(Wrapper(net), x, y)
    for a, b, extra_a, extra_b in ((plain, wrapped, (), ("module",)), (wrapped, plain, ("module",), ())):
        d = a.diff(b)
        assert d.only_a == d.only_b == () and len(d.changes) == len(a.nodes)
        assert d.modules_only_a == extra_a and d.modules_only_b == extra_b, "the wrapper itself is the difference"
        assert all(c.grad_log2 in (0.0, None) and c.rms_log2 in (0.0, None) for c in d.changes)
        assert {(a.node(c.a).label, b.node(c.b).label) for c in d.params} == {
            (p, q) for p, q in zip(*[sorted(n.label for n in t.nodes if n.kind == "param") for t in (a, b)])}


class Detached(nn.Module):
    """Net with an optional ``detach()`` before fc2: a code change that cuts fc1 off from the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = False
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return F.log_softmax(self.fc2(h.detach() if self.cut else h), dim=1)


def test_a_branch_cut_by_detach_is_only_in_a_and_the_rest_still_matched():
    """The cut drops fc1 from B's graph. The top level's ops (relu before the cut in A; log_softmax,
    nll_loss in both) must still match though the order the forward first entered each module changed."""
    torch.manual_seed(0)
    net = Detached()
    x, y = data()
    a = traced(net, x, y)
    net.cut = True
    plain = copy.deepcopy(net)  # torch: with the cut, fc1 gets no gradient at all
    loss_fn(plain(x), y).backward()
    assert plain.fc1.weight.grad is None and plain.fc2.weight.grad is not None
    b = traced(net, x, y)
    d = a.diff(b)
    assert {(a.node(k).label, a.node(k).module) for k in d.only_a} == {
        ("fc1.weight", "fc1"), ("fc1.bias", "fc1"), ("t", "fc1"), ("addmm", "fc1"), ("relu", ""), ("x", "")}
    assert d.only_b == ()
    assert {(c.label, c.scope) for c in d.changes} == {
        ("fc2.weight", "fc2"), ("fc2.bias", "fc2"), ("t", "fc2"), ("addmm", "fc2"), ("log_softmax", ""), ("nll_loss", "")}
    rb = reference(net, x, y)
    net.cut = False
    ra = reference(net, x, y)
    for c in d.changes:  # downstream of the cut nothing changed, as torch says
        assert c.grad_log2 == 0.0 and c.rms_log2 == 0.0, c
    assert torch.equal(ra["fc2.weight"][1], rb["fc2.weight"][1]) and torch.equal(ra["fc2"][1], rb["fc2"][1])


def test_a_gradient_in_one_trace_only_is_reported_and_fails_any_factor():
    x, y = data()
    a = traced(Net(), x, y)
    (key,) = a.find("addmm", module="fc1")
    # B: the same step, but backprop did not reach fc1's addmm (its gradient was not recorded).
    b = Trace(nodes=tuple(dataclasses.replace(n, grads=(None,)) if n.key == key else n for n in a.nodes),
              edges=a.edges, loss=a.loss, modules=a.modules)
    d = a.diff(b)
    (c,) = d.grad_in_one_only
    assert (c.label, c.scope, c.grad_only_in) == ("addmm", "fc1", "A") and c.grad_log2 is None
    assert d.largest(1) == [c] and d.beyond(1e9) == [c]
    assert "gradient reached only in A (1): addmm in fc1" in d.to_text()
    assert b.diff(a).grad_in_one_only[0].grad_only_in == "B"


class Prepended(nn.Module):
    """fc1 -> relu -> fc2, and in one version a layer of the same width and a top-level relu before fc1."""

    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.extra = extra
        if extra:
            self.pre = nn.Linear(6, 6)
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra:
            x = torch.relu(self.pre(x))
        return F.log_softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)


def test_an_op_repeated_by_the_change_is_matched_by_what_feeds_it():
    """B's first relu (after the new layer) has A's relu's label, shape and grad_fn: only what feeds
    it tells them apart."""
    torch.manual_seed(0)
    a_net, b_net = Prepended(False), Prepended(True)
    b_net.fc1.load_state_dict(a_net.fc1.state_dict())
    b_net.fc2.load_state_dict(a_net.fc2.state_dict())
    x, y = data()
    a, b = traced(a_net, x, y), traced(b_net, x, y)
    d = a.diff(b)
    assert d.modules_only_b == ("pre",) and d.only_a == ()
    (relu,) = [c for c in d.changes if c.label == "relu"]
    (feeder,) = b.graph.predecessors(relu.b)
    assert b.node(feeder).module == "fc1", "A's relu is B's relu after fc1"
    (new_relu,) = [k for k in d.only_b if b.node(k).label == "relu"]
    assert b.node(next(iter(b.graph.predecessors(new_relu)))).module == "pre"
    ra, rb = reference(a_net, x, y), reference(b_net, x, y)
    c = change(d, "addmm", "fc2")
    assert close_log2(c.grad_log2, math.log2(norm(rb["fc2"][1]) / norm(ra["fc2"][1])))
