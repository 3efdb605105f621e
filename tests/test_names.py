"""Names that do not mislead: op labels from real grad_fn names, module scopes, inputs, parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace.recorder.assemble import op_label

# Real grad_fn class names from torch and the ATen op a person should read.
LABELS = [
    ("MaxPool2DWithIndicesBackward0", "max_pool2d_with_indices"),
    ("MaxPool3DWithIndicesBackward0", "max_pool3d_with_indices"),
    ("AvgPool2DBackward0", "avg_pool2d"),
    ("AdaptiveAvgPool2DBackward0", "adaptive_avg_pool2d"),
    ("ReflectionPad1DBackward0", "reflection_pad1d"),
    ("UpsampleBilinear2DBackward0", "upsample_bilinear2d"),
    ("UpsampleBicubic2DAaBackward0", "upsample_bicubic2d_aa"),
    ("NllLoss2DBackward0", "nll_loss2d"),
    ("SmoothL1LossBackward0", "smooth_l1_loss"),
    ("Log1PBackward0", "log1p"),
    ("Deg2RadBackward0", "deg2rad"),
    ("SpecialXlog1PyBackward0", "special_xlog1py"),
    ("FftR2CBackward0", "fft_r2c"),
    ("AddmmBackward0", "addmm"),
    ("NativeLayerNormBackward0", "native_layer_norm"),
    ("LogSoftmaxBackward0", "log_softmax"),
    ("UnsafeViewBackward0", "unsafe_view"),
    ("TBackward0", "t"),
    ("SumBackward1", "sum"),
    ("ConvolutionBackward0", "convolution"),
    ("ScaledDotProductEfficientAttentionBackward0", "scaled_dot_product_efficient_attention"),
    ("CopySlices", "copy_slices"),
    ("MyFuncBackward", "my_func"),  # a custom autograd.Function: its CamelCase split
]


@pytest.mark.parametrize("grad_fn,label", LABELS)
def test_op_label_is_the_aten_name(grad_fn, label):
    if grad_fn.endswith(("0", "1")):
        assert hasattr(torch._C._functions, grad_fn), "the table holds real grad_fn names"
    assert op_label(grad_fn) == label


def test_labels_of_a_real_pooling_step():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.AvgPool2d(1), nn.Flatten())
    t = gradtrace.trace(net, torch.randn(1, 1, 6, 6))
    labels = {n.grad_fn: n.label for n in t.nodes if n.kind == "op"}
    assert labels["MaxPool2DWithIndicesBackward0"] == "max_pool2d_with_indices"
    assert labels["AvgPool2DBackward0"] == "avg_pool2d"


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.act(self.linear(x)))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))


def test_scope_numbers_repeated_calls_nested():
    t = gradtrace.trace(Twice(), torch.randn(2, 3))
    ops = sorted((n for n in t.nodes if n.kind == "op"), key=lambda n: n.forward_step)
    scopes = [(n.label, n.module, n.scope) for n in ops if n.module]
    assert scopes == [
        ("t", "block.linear", "block.linear"), ("addmm", "block.linear", "block.linear"),
        ("tanh", "block.act", "block.act"), ("tanh", "block.act", "block.act#2"),
        ("t", "block.linear", "block#2.linear"), ("addmm", "block.linear", "block#2.linear"),
        ("tanh", "block.act", "block#2.act"), ("tanh", "block.act", "block#2.act#2"),
    ]
    last = [n for n in ops if n.module][-1]
    assert t.graph.nodes[last.key]["scope"] == "block#2.act#2"


def test_course_cnn_pool_twice_has_two_scopes():
    from gradtrace.script import run_script

    t = run_script(_script("course_cnn.py"), step=2)
    pools = sorted((n for n in t.nodes if n.label == "max_pool2d_with_indices"), key=lambda n: n.forward_step)
    assert [(n.module, n.scope) for n in pools] == [("pool", "pool"), ("pool", "pool#2")]
    # Each scope's ops run forward only: no edge leaves a later scope for an earlier one of the same module.


def _script(name: str) -> str:
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", name)


def test_inputs_are_numbered_among_those_drawn():
    """A transform module called on each sample before the model does not push the batch to `input 4`."""
    from gradtrace.script import run_script

    t = run_script(_script("course_cnn.py"), step=2)
    inputs = sorted((n for n in t.nodes if n.kind == "input"), key=lambda n: n.key)
    assert [n.label for n in inputs] == [f"input {i}" for i in range(len(inputs))]
    conv = min((n for n in t.nodes if n.label == "convolution"), key=lambda n: n.forward_step)
    (src,) = [e.src for e in t.edges if e.dst == conv.key and t.node(e.src).kind == "input"]
    assert t.node(src).label == "input 0" and t.node(src).value.shape == (4, 1, 14, 14)


def test_the_model_gets_bare_names_even_when_called_second():
    from gradtrace.script import run_script

    t = run_script(_script("course_cnn.py"), step=2)
    params = sorted(n.label for n in t.nodes if n.kind == "param")
    assert params == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "fc1.bias", "fc1.weight"]
    assert {n.module for n in t.nodes if n.label == "convolution"} == {"conv1", "conv2"}
    assert t.modules["conv1"] == "Conv2d" and t.modules["Normalize"] == "Normalize" and "Net.conv1" not in t.modules


def test_two_networks_in_one_graph_are_both_named_by_class():
    from gradtrace.script import run_script

    t = run_script(_script("two_nets.py"), step=2)
    params = sorted(n.label for n in t.nodes if n.kind == "param")
    assert params == ["Discriminator.main.0.bias", "Discriminator.main.0.weight",
                      "Generator.main.0.bias", "Generator.main.0.weight"]
    assert {n.module for n in t.nodes if n.label == "sigmoid"} == {"Discriminator.main.1"}
    one = run_script(_script("two_nets.py"), step=1)
    assert sorted(n.label for n in one.nodes if n.kind == "param") == ["main.0.bias", "main.0.weight"]


def test_parameters_of_a_model_called_through_forward_are_named():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    model = Scale()
    x = torch.randn(4, 3)
    with gradtrace.capture() as cap:
        model.forward(x).sum().backward()  # no module hook runs
    assert [n.label for n in cap.trace.nodes if n.kind == "param"] == ["w"]
    layer = nn.Linear(3, 2)
    with gradtrace.capture() as cap:
        layer.forward(x).pow(2).sum().backward()
    assert sorted(n.label for n in cap.trace.nodes if n.kind == "param") == ["bias", "weight"]
