"""The diagnosis corpus: healthy training steps of real architectures, and planted faults.

Every model is built from a config or from code here, with random weights (no
downloads), small enough that one traced step takes a fraction of a second. A
healthy case must give no warning and no alarm (notes are allowed); a fault case
must give a warning or alarm of the expected kind at the node where the fault
starts (``Case.expect`` decides), and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import gradtrace
from gradtrace.records import TraceNode

from ..diagnose_models import DeadReLU, LogOfNegative, SqrtAtZero, deep_sigmoid
from ..models import Block

__all__ = ["CASES", "Case"]


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``build(seed)`` returns the trace of one training step."""

    name: str
    build: Callable[[int], gradtrace.Trace]
    kinds: frozenset[str] = frozenset()  # empty: healthy
    at: Callable[[TraceNode], bool] = lambda n: True  # the node a finding must name

    @property
    def healthy(self) -> bool:
        return not self.kinds


def _step(model: nn.Module, loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer | None = None,
          after_backward: Callable[[], None] | None = None) -> gradtrace.Trace:
    with gradtrace.capture(model) as cap:
        if opt is not None:
            opt.zero_grad()
        loss_fn().backward()
        if after_backward is not None:
            after_backward()
        if opt is not None:
            opt.step()
    return cap.trace


# -- transformers (Hugging Face configs, random weights) ---------------------------------------


def _hf_lm(kind: str) -> Callable[[int], gradtrace.Trace]:
    def build(seed: int) -> gradtrace.Trace:
        import transformers as tf

        torch.manual_seed(seed)
        small = dict(vocab_size=96)
        if kind == "gpt2":
            model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, **small))
        elif kind == "llama":
            model = tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                       num_key_value_heads=2, max_position_embeddings=32, **small))
        elif kind == "bert":
            model = tf.BertForMaskedLM(tf.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                                     max_position_embeddings=32, **small))
        else:
            model = tf.T5ForConditionalGeneration(tf.T5Config(num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                                              decoder_start_token_id=0, **small))
        model.train()
        ids = torch.randint(0, 96, (2, 12))
        # AdamW during a linear warm-up (lr 6e-4 at step 1 of 2000): the first updates are tiny, and healthy.
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4 / 2000)
        if kind == "t5":
            return _step(model, lambda: model(input_ids=ids, labels=torch.randint(0, 96, (2, 8))).loss, opt)
        if kind == "bert":
            labels = ids.masked_fill(torch.rand(ids.shape) > 0.3, -100)
            labels[0, 0] = ids[0, 0]
            return _step(model, lambda: model(input_ids=ids, labels=labels).loss, opt)
        return _step(model, lambda: model(input_ids=ids, labels=ids).loss, opt)

    return build


def _vit(seed: int) -> gradtrace.Trace:
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.ViTForImageClassification(tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, intermediate_size=64, num_labels=5))
    model.train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return _step(model, lambda: model(pixel_values=x, labels=y).loss, opt)


def _resnet(layer_type: str) -> Callable[[int], gradtrace.Trace]:
    def build(seed: int) -> gradtrace.Trace:
        import transformers as tf

        torch.manual_seed(seed)
        if layer_type == "basic":  # ResNet-18's layout: four stages of two basic blocks
            config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[2, 2, 2, 2], layer_type="basic", num_labels=5)
        else:  # ResNet-50's layout: 3-4-6-3 bottleneck blocks
            config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[16, 16, 32, 32], depths=[3, 4, 6, 3], layer_type="bottleneck", num_labels=5)
        model = tf.ResNetForImageClassification(config)
        model.train()
        x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        return _step(model, lambda: model(pixel_values=x, labels=y).loss, opt)

    return build


# -- MobileNet / EfficientNet-style (written here: torchvision is not a dependency) ------------


class StochasticDepth(nn.Module):
    """torchvision's "row" stochastic depth: each sample's residual branch is dropped with probability p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype).bernoulli_(survival).div_(survival)
        return x * noise


class MBConv(nn.Module):
    """Inverted residual: expand 1×1, depthwise 3×3, squeeze-excite, project 1×1 (convs with bias before BatchNorm)."""

    def __init__(self, c: int, expand: int, drop: float) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1), nn.BatchNorm2d(h), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(h, max(1, c // 4), 1), nn.SiLU(), nn.Conv2d(max(1, c // 4), h, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1), nn.BatchNorm2d(c))
        self.drop = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.expand(x))
        h = self.project(h * self.se(h))
        return x + self.drop(h)


class EfficientNetish(nn.Module):
    def __init__(self, relu6: bool = False) -> None:
        super().__init__()
        act = nn.ReLU6() if relu6 else nn.SiLU()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), act)
        self.blocks = nn.Sequential(*[MBConv(8, 4, drop=0.5 * i / 3) for i in range(4)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _efficientnet(relu6: bool) -> Callable[[int], gradtrace.Trace]:
    def build(seed: int) -> gradtrace.Trace:
        torch.manual_seed(seed)
        model = EfficientNetish(relu6)
        x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 5, (2,))
        opt = torch.optim.RMSprop(model.parameters(), lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9)
        return _step(model, lambda: F.cross_entropy(model(x), y), opt)

    return build


# -- recurrent and transformer language models (pytorch/examples word_language_model) ---------


class RNNModel(nn.Module):
    def __init__(self, rnn: str, ntoken: int = 200, ninp: int = 32, nhid: int = 32, nlayers: int = 2) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn)(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.drop(self.encoder(x)))
        return F.log_softmax(self.decoder(self.drop(out)), dim=-1)


def _rnn_lm(rnn: str) -> Callable[[int], gradtrace.Trace]:
    def build(seed: int) -> gradtrace.Trace:
        torch.manual_seed(seed)
        model = RNNModel(rnn)
        x, y = torch.randint(0, 200, (12, 4)), torch.randint(0, 200, (12, 4))
        # The example's own recipe: plain SGD at lr 20 after clipping the gradient norm to 0.25.
        opt = torch.optim.SGD(model.parameters(), lr=20)
        return _step(model, lambda: F.nll_loss(model(x).view(-1, 200), y.view(-1)), opt,
                     after_backward=lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25))

    return build


class TransformerLM(nn.Module):
    def __init__(self, ntoken: int = 200, d: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Embedding(ntoken, d)
        self.layers = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 64, dropout=0.1), 2, enable_nested_tensor=False)
        self.decoder = nn.Linear(d, ntoken)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[0])
        return F.log_softmax(self.decoder(self.layers(self.encoder(x) * math.sqrt(32), mask=mask, is_causal=True)), dim=-1)


def _transformer_lm(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model = TransformerLM()
    x, y = torch.randint(0, 200, (12, 4)), torch.randint(0, 200, (12, 4))
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    return _step(model, lambda: F.nll_loss(model(x).view(-1, 200), y.view(-1)), opt,
                 after_backward=lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25))


def _causal_block(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model = Block()
    x = torch.randn(2, 5, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _step(model, lambda: model(x).pow(2).mean(), opt)


# -- DCGAN, the tutorial CNN, the course example -----------------------------------------------


def _dcgan_nets(nz: int, ngf: int = 8, ndf: int = 8) -> tuple[nn.Module, nn.Module]:
    """The DCGAN tutorial's generator and discriminator, small, with its initialisation."""
    g = nn.Sequential(nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                      nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
                      nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                      nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
                      nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False), nn.Sigmoid())
    for m in [*g.modules(), *d.modules()]:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return g, d


def _dcgan(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    nz = 8
    g, d = _dcgan_nets(nz)
    gan = nn.ModuleDict({"netG": g, "netD": d})
    z = torch.randn(4, nz, 1, 1)
    opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    # The generator's step: D judges G's fakes against the "real" label.
    return _step(gan, lambda: F.binary_cross_entropy(d(g(z)).view(-1), torch.ones(4)), opt)


class TutorialCNN(nn.Module):
    """The CNN of PyTorch's "Training a classifier" tutorial (CIFAR-10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _tutorial_cnn(batch: int) -> Callable[[int], gradtrace.Trace]:
    def build(seed: int) -> gradtrace.Trace:
        torch.manual_seed(seed)
        model = TutorialCNN()
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        return _step(model, lambda: F.cross_entropy(model(x), y), opt)

    return build


def _course(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    point = torch.tensor([1.0 + seed, -2.0], requires_grad=True)
    opt = torch.optim.SGD([point], lr=0.2)
    with gradtrace.capture() as cap:
        opt.zero_grad()
        (point[0] ** 2 + 2 * point[1] ** 2).backward()
        opt.step()
    return cap.trace


def _siamese(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 32))
    a, b, same = torch.randn(8, 1, 14, 14), torch.randn(8, 1, 14, 14), torch.randint(0, 2, (8,)).float()

    def contrastive() -> torch.Tensor:  # one encoder, two inputs: the shared weights get the sum of both paths
        d = F.pairwise_distance(enc(a), enc(b))
        return (same * d.pow(2) + (1 - same) * F.relu(1.0 - d).pow(2)).mean()

    return _step(enc, contrastive, torch.optim.Adam(enc.parameters(), lr=1e-3))


def _amp_gradscaler(seed: int) -> gradtrace.Trace:
    # AMP's standard step: the loss scaled by GradScaler (2**16 by default), unscaled, clipped, stepped.
    torch.manual_seed(seed)
    model = TutorialCNN()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    with gradtrace.capture(model) as cap:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    return cap.trace


def _dcgan_two_optimizers(seed: int) -> gradtrace.Trace:
    # The DCGAN tutorial's whole iteration, two optimizers: the generator's backward (step 3) runs through
    # D, whose parameters still hold D's gradient; only optG steps.
    torch.manual_seed(seed)
    nz = 8
    g, d = _dcgan_nets(nz)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real, noise = torch.randn(4, 3, 16, 16).tanh(), torch.randn(4, nz, 1, 1)
    with gradtrace.capture(nn.ModuleDict({"netG": g, "netD": d}), step=3) as cap:
        d.zero_grad()
        F.binary_cross_entropy(d(real).view(-1), torch.ones(4)).backward()
        fake = g(noise)
        F.binary_cross_entropy(d(fake.detach()).view(-1), torch.zeros(4)).backward()
        opt_d.step()
        g.zero_grad()
        F.binary_cross_entropy(d(fake).view(-1), torch.ones(4)).backward()
        opt_g.step()
    return cap.trace


# -- planted faults ------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, depth: int = 6, width: int = 16, n_out: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 1)])
        self.out = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(x))


def _nan_input(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = MLP(), torch.randn(8, 16), torch.randint(0, 4, (8,))
    x[3, 5] = float("nan")
    return _step(model, lambda: F.cross_entropy(model(x), y), torch.optim.SGD(model.parameters(), lr=0.01))


def _inf_target(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = MLP(), torch.randn(8, 16), torch.randn(8, 4)
    y[2, 1] = float("inf")
    return _step(model, lambda: F.mse_loss(model(x), y), torch.optim.SGD(model.parameters(), lr=0.01))


def _deep_sigmoid(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = deep_sigmoid(20), torch.randn(16, 16), torch.randn(16, 16)
    return _step(model, lambda: F.mse_loss(model(x), y), torch.optim.SGD(model.parameters(), lr=0.01))


def _scaled_layer(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = MLP(), torch.randn(8, 16), torch.randint(0, 4, (8,))
    with torch.no_grad():
        model.layers[2][0].weight.mul_(1e4)
    return _step(model, lambda: F.cross_entropy(model(x), y), torch.optim.SGD(model.parameters(), lr=0.01))


def _log_negative(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model = LogOfNegative()
    return _step(model, lambda: model(torch.randn(8, 4)))


def _sqrt_zero(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model = SqrtAtZero()
    return _step(model, lambda: model(torch.randn(4, 3)))


class _SqrtOfRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.relu(self.fc(x))).sum()


def _sqrt_absorbed(seed: int) -> gradtrace.Trace:
    # sqrt at 0 makes an inf gradient; ReLU's backward zeroes it before the weight: fragile, not broken.
    torch.manual_seed(seed)
    model, x = _SqrtOfRelu(), torch.randn(8, 4)
    x[0] = 0
    return _step(model, lambda: model(x))


def _dead_relu(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = DeadReLU(), torch.randn(8, 8), torch.randint(0, 2, (8,))
    return _step(model, lambda: F.cross_entropy(model(x), y), torch.optim.SGD(model.parameters(), lr=0.01))


def _sgd_lr10(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = MLP(), torch.randn(8, 16), torch.randint(0, 4, (8,))
    return _step(model, lambda: F.cross_entropy(model(x), y), torch.optim.SGD(model.parameters(), lr=10.0))


class Rounded(nn.Module):
    """Quantises its hidden layer with round() and no straight-through estimator: fc1 learns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.quant = Round()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.quant(self.fc1(x)))


class Round(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def _zero_grad_param(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model, x, y = Rounded(), torch.randn(8, 16), torch.randint(0, 4, (8,))
    return _step(model, lambda: F.cross_entropy(model(x), y), torch.optim.SGD(model.parameters(), lr=0.01))


def _rnn_overflow(seed: int) -> gradtrace.Trace:
    torch.manual_seed(seed)
    model = RNNModel("LSTM")
    opt = torch.optim.SGD(model.parameters(), lr=1e37)  # far beyond any sane rate: the logits overflow float32 within three steps
    x, y = torch.randint(0, 200, (12, 4)), torch.randint(0, 200, (12, 4))
    for _ in range(30):
        rng = torch.get_rng_state()
        with torch.no_grad():
            loss = F.nll_loss(model(x).view(-1, 200), y.view(-1))
        torch.set_rng_state(rng)
        if not torch.isfinite(loss):
            break  # trace the first step whose loss is no longer finite
        opt.zero_grad()
        F.nll_loss(model(x).view(-1, 200), y.view(-1)).backward()
        opt.step()
    return _step(model, lambda: F.nll_loss(model(x).view(-1, 200), y.view(-1)), opt)


def _in(module: str, *, label: str | None = None) -> Callable[[TraceNode], bool]:
    return lambda n: (n.module == module or n.module.startswith(module + ".")) and (label is None or n.label == label)


CASES: tuple[Case, ...] = (
    Case("gpt2", _hf_lm("gpt2")),
    Case("bert", _hf_lm("bert")),
    Case("t5", _hf_lm("t5")),
    Case("llama", _hf_lm("llama")),
    Case("vit", _vit),
    Case("resnet18-style", _resnet("basic")),
    Case("resnet50-style", _resnet("bottleneck")),
    Case("efficientnet-style", _efficientnet(False)),
    Case("mobilenet-style", _efficientnet(True)),
    Case("lstm-lm", _rnn_lm("LSTM")),
    Case("gru-lm", _rnn_lm("GRU")),
    Case("transformer-lm", _transformer_lm),
    Case("causal-block", _causal_block),
    Case("dcgan", _dcgan),
    Case("siamese", _siamese),
    Case("tutorial-cnn-b1", _tutorial_cnn(1)),
    Case("tutorial-cnn-b4", _tutorial_cnn(4)),
    Case("tutorial-cnn-b64", _tutorial_cnn(64)),
    Case("course-gd", _course),
    Case("amp-gradscaler", _amp_gradscaler),
    Case("dcgan-two-optimizers", _dcgan_two_optimizers),
    Case("nan-input", _nan_input, frozenset({"nan_data"}), lambda n: n.kind == "input"),
    Case("inf-target", _inf_target, frozenset({"inf_data", "inf_forward"}), lambda n: n.kind == "input" or n.label == "mse_loss"),
    Case("deep-sigmoid", _deep_sigmoid, frozenset({"vanishing"}), lambda n: n.module in {str(i) for i in range(10)}),
    Case("scaled-layer", _scaled_layer, frozenset({"exploding"}), _in("layers.2")),
    Case("log-negative", _log_negative, frozenset({"nan_forward"}), lambda n: n.label == "log"),
    Case("sqrt-at-zero", _sqrt_zero, frozenset({"inf_backward"}), lambda n: n.label == "sqrt"),
    Case("sqrt-absorbed", _sqrt_absorbed, frozenset({"absorbed_backward"}), lambda n: n.label == "sqrt"),
    Case("dead-relu", _dead_relu, frozenset({"dead"}), lambda n: n.label == "relu"),
    Case("sgd-lr10", _sgd_lr10, frozenset({"update_ratio"}), lambda n: n.kind == "param"),
    Case("zero-grad-param", _zero_grad_param, frozenset({"zero_grad"}), lambda n: n.label == "round"),
    Case("rnn-overflow", _rnn_overflow, frozenset({"nan_data", "inf_data", "nan_forward", "inf_forward"}), lambda n: True),
)
