"""Every threshold ``diagnose()`` uses, in one place, each with the reason for its value.

They were calibrated on the diagnosis corpus (``python3 -m tests.corpus``): healthy
training steps of GPT-2, BERT, T5, Llama, ViT, ResNet, MobileNet/EfficientNet-style
nets, LSTM/GRU language models, a DCGAN and the tutorial CNN at several batch sizes
and seeds, and planted faults. A change here must keep that corpus at zero warnings
on the healthy cases and every planted fault found (tests/test_corpus.py pins it).

What a finding may depend on: only quantities that do not move with the batch size
or the loss's reduction. Parameter gradients are such quantities (under a mean
reduction they are averages over the batch); per-element gradients of activations
are not (they shrink as 1/N under a mean), so no threshold compares those.
"""

from __future__ import annotations

__all__ = [
    "CANCELLED", "DEAD_MIN_ELEMENTS", "FAR", "HUGE", "NORMALISING", "SCALING", "SPARSE_GRAD", "MIN_GROUP", "RELU_LIKE", "UPDATE_HIGH", "UPDATE_MIN_WEIGHT_RMS", "ZERO_DERIVATIVE",
]

#: Vanishing / exploding parameter gradients: a parameter's gradient RMS is below
#: ``FAR`` × (above ``1/FAR`` ×) both the median over its group (weights, biases,
#: other parameters) and the gradient of the group's parameter nearest the loss.
#: Three orders of magnitude: in the healthy corpus the spread between the median
#: and the extremes stays within two (embeddings, whose gradient touches only the
#: rows of the tokens seen, are the lowest); a deep sigmoid MLP puts its first
#: layers five or more orders below.
FAR = 1e-3

#: The layer-gain check (one op that multiplies, or divides, both its forward signal and its
#: gradient by ``1/FAR`` or more: a layer scaled ×1e4) looks only at ops with weights of their own
#: and at these products and quotients; never at ops that rescale by design what they read.
SCALING = frozenset({"mul", "div"})
NORMALISING = frozenset({"softmax", "_softmax", "log_softmax", "_log_softmax", "native_layer_norm", "native_batch_norm",
                         "native_group_norm", "_native_batch_norm_legit_functional", "_native_batch_norm_legit", "rms_norm",
                         "_fused_rms_norm", "sum", "mean", "linalg_vector_norm", "norm"})

#: Ops that read a few rows of a parameter (an embedding table): the gradient touches only the
#: rows of the tokens in the batch, so its RMS over the whole table falls as sqrt(rows used / vocabulary)
#: — 1e-3 for two tokens of a 400,000-word vocabulary — however well the gradient flows. Such
#: parameters are left out of the vanishing/exploding comparison.
SPARSE_GRAD = frozenset({"embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"})

#: A group needs this many parameters before a median means anything.
MIN_GROUP = 3

#: A bias-like (1-D) parameter whose gradient norm is below ``CANCELLED`` × the
#: norm of the gradient at the output of the op it feeds has had its gradient
#: cancelled by what follows, not shrunk: the gradient reaching the op is healthy,
#: and summing it over the batch gives (numerically) zero. That is a fact about
#: the architecture — a bias in front of BatchNorm (the normalisation removes any
#: constant shift), the key-projection bias of attention (softmax is invariant to
#: a constant added to every score of a row) — a note, never a warning. Without
#: such structure the two norms are of the same order (the bias gradient is a sum
#: of terms of varying signs: about sqrt(N) × RMS, like the output's norm);
#: structural cancellation leaves float rounding, 1e-6 and below.
CANCELLED = 1e-4

#: ReLU-like ops: an output that is zero for the whole batch passes no gradient ("dead").
RELU_LIKE = frozenset({"relu", "relu6", "hardtanh", "threshold", "leaky_relu"})

#: A ReLU output must have at least this many elements to be called dead: with fewer, all of them
#: negative happens by chance (the 8 squeeze units of a squeeze-excite block at batch 1 are all
#: negative one time in 256); 16 elements all zero by chance is one in 65,536.
DEAD_MIN_ELEMENTS = 16

#: Autograd nodes whose derivative is zero everywhere: a gradient that reaches them
#: stops there, and the parameters upstream learn nothing. A real bug (rounding or
#: quantising without a straight-through estimator), so a warning.
ZERO_DERIVATIVE = frozenset({"RoundBackward0", "RoundBackward1", "FloorBackward0", "CeilBackward0", "SignBackward0",
                             "TruncBackward0", "SgnBackward0"})

#: Update size: ‖Δw‖/‖w‖ of the captured optimizer step above ``UPDATE_HIGH``: the
#: step moved the parameter by more than its own size. Healthy training spans a wide
#: range below that — a learning rate warm-up makes the first updates 1e-7 and less;
#: Adam's first step moves every element by about lr, so a small tensor sees lr/RMS(w),
#: 1e-2 to 1e-1; the course's gradient-descent example (lr 0.2 on x² + 2y²) moves the
#: point by 0.6 of its norm — so "too small" is no warning at all, and "too large"
#: starts where the step overshoots the weight itself (SGD at lr 10 gives 10 and more).
UPDATE_HIGH = 3.0

#: (Weights that feed a BatchNorm/LayerNorm/GroupNorm through linear ops only are left out of
#: this check: the normalisation makes them scale-invariant, so a step larger than the weight only
#: grows its norm. A healthy ResNet-50 moves its stem convolution by 5–50× its norm in the first
#: SGD step at lr 0.1, depending on image and batch size, and trains fine.)

#: Parameters whose RMS is below this before the step are left out of the update-size
#: check: a bias or LayerNorm shift initialised to zero has ‖w‖ ≈ 0 and any step is
#: "infinitely" large next to it.
UPDATE_MIN_WEIGHT_RMS = 1e-3

#: A NaN or inf born at an op whose inputs are finite but larger than this in magnitude
#: comes from overflow (float32 ends at 3.4e38; a product or sum of such values leaves it),
#: not from a hidden operand: the message says so instead of pointing at the targets.
HUGE = 1e18
