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
