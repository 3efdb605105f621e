"""What the watch engine keeps of each optimizer, model and sampled step (records only: the engine fills them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OptState", "RootState", "Row"]


@dataclass
class OptState:
    name: str
    ref: Any  # weakref to the optimizer
    count: int = 0
    before: list[torch.Tensor] | None = None
    delta: list[torch.Tensor] | None = None  # ‖Δw‖ per parameter once the step is done (computed once, used twice)
    params: list[torch.Tensor] = field(default_factory=list)
    pre: list[torch.Tensor] | None = None  # device tensors of a sampled step, waiting for the post-step half
    sentinel_pre: list[torch.Tensor] | None = None
    stepped_in_scaler: bool = False
    #: A sample fell on a step GradScaler skipped: this optimizer's next real step is sampled instead.
    owed: bool = False
    #: Its class and the ids of the tensors it holds, as of its last step (the history is written after the script
    #: returned, when an optimizer local to its main() is gone).
    type_name: str = "?"
    #: Calls of its step() under way: torch runs the step hooks in every class's step(), so a subclass calling
    #: super().step() passes them twice (once the parent class's step is hooked, by any instance of it); only the
    #: outermost call is this optimizer's step.
    depth: int = 0
    frame: Any = None  # the frame of the outermost step() call under way (a step that raised never ran its post hook)
    #: This step was step(closure) (LBFGS and other line searches): its backward() calls run inside it, so its
    #: gradients are read after it (the last evaluation's, which the optimizer used last) and its loss is the first
    #: evaluation's (the loss at the start of the step, as LBFGS.step returns it).
    closure: bool = False
    sampled: bool = False
    held: list[int] = field(default_factory=list)
    #: The roots (prefixes) whose parameters it holds, as of its last step.
    roots: set[str] = field(default_factory=set)


@dataclass
class RootState:
    """A top-level module the engine met, held weakly: what naming needs outlives it (a sweep trains fresh models
    one after another, and the engine must not keep every one, with its gradients, to the end of the run)."""

    prefix: str
    cls: str
    has_params: bool
    ref: Any  # weakref.ref to the module
    mid: int  # its id() while it lives
    module_ids: list[int]
    param_ids: list[int]


@dataclass
class Row:
    """One sampled (step, optimizer): its parameters' names and ids beside one device tensor of their statistics."""

    step: int
    opt: str
    param_ids: list[int]
    param_names: list[str]  # raw names (the engine's prefixes), resolved while the parameters were alive
    numels: list[int]
    values: torch.Tensor  # [grad_norm..., grad_nonfinite..., value_norm..., delta_norm...]
    loss: torch.Tensor | None
    lrs: list[float | None]
