"""The real-size models of issue #15, for `bench.py --real` (a GPU, a few minutes for all rows).

GPT-2 124M (transformers' GPT2 from its config, random weights), a Llama-style
decoder (8 layers, d=1024, grouped-query attention), ResNet-50 (bottleneck
blocks, written here: torchvision is not a dependency), each in float32 and
under bfloat16 autocast. ``tiny=True`` shrinks every model to a dry run that
finishes in seconds on a CPU, so the GPU run does not die on a typo.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

Built = tuple[nn.Module, tuple[Any, ...], Callable[[Any], torch.Tensor]]


class Autocast(nn.Module):
    """Runs the model under autocast, as a bfloat16 training step does (the loss is taken in float32)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        device = next(self.inner.parameters()).device.type
        with torch.autocast(device, dtype=self.dtype):
            return self.inner(*args)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """ResNet-50's shape: a 7×7 stem, stages of (3, 4, 6, 3) bottleneck blocks, pooling, a linear head."""

    def __init__(self, width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, c = [], width
        for i, n in enumerate(blocks):
            w = width * 2**i
            for j in range(n):
                layers.append(Bottleneck(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def gpt2(device: torch.device, tiny: bool) -> Built:
    _quiet()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000) if tiny else GPT2Config(n_layer=12, n_embd=768, n_head=12)
    model = GPT2LMHeadModel(cfg).to(device)
    batch, seq = (1, 16) if tiny else (4, 256)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    return model, (ids,), lambda out: F.cross_entropy(out.logits.flatten(0, 1).float(), ids.flatten())


def llama(device: torch.device, tiny: bool) -> Built:
    _quiet()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if tiny:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=1000, max_position_embeddings=64)
    else:
        cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).to(device)
    batch, seq = (1, 16) if tiny else (4, 256)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    return model, (ids,), lambda out: F.cross_entropy(out.logits.flatten(0, 1).float(), ids.flatten())


def resnet50(device: torch.device, tiny: bool) -> Built:
    torch.manual_seed(0)
    model = (ResNet50(width=8, blocks=(1, 1, 1, 1), classes=10) if tiny else ResNet50()).to(device)
    batch, px = (2, 32) if tiny else (16, 224)
    x = torch.randn(batch, 3, px, px, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, (x,), lambda out: F.cross_entropy(out.float(), y)


def bf16(build: Callable[[torch.device, bool], Built]) -> Callable[[torch.device, bool], Built]:
    def wrapped(device: torch.device, tiny: bool) -> Built:
        model, inputs, loss = build(device, tiny)
        return Autocast(model, torch.bfloat16), inputs, loss

    return wrapped


#: name -> build(device, tiny)
REAL = {
    "gpt2-124M b4×256 fp32": gpt2,
    "gpt2-124M b4×256 bf16": bf16(gpt2),
    "llama 8L d1024 gqa fp32": llama,
    "llama 8L d1024 gqa bf16": bf16(llama),
    "resnet-50 b16 224 fp32": resnet50,
    "resnet-50 b16 224 bf16": bf16(resnet50),
}
