"""Watch a whole training run (``gradtrace.watch``, ``gradtrace watch``, ``gradtrace check --every-step``).

Statistics every N steps, and a sentinel that finds the first broken step.

>>> with gradtrace.watch(model, every=10) as w:        # doctest: +SKIP
...     for x, y in loader:
...         opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
>>> w.history.save("run.html")                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .history import History
from .rankhistory import RankHistories, load_history

__all__ = ["History", "RankHistories", "Watch", "load_history", "watch"]


class Watch:
    """The handle ``gradtrace.watch(...)`` gives: ``history`` once the block has ended (or so far, inside it)."""

    def __init__(self, model: Any, every: int | None, steps: tuple[int, int | None]) -> None:
        from .engine import Watcher

        self._watcher = Watcher(model, every=every, steps=steps)

    def __enter__(self) -> Watch:
        self._watcher.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watcher.__exit__(*exc)

    @property
    def history(self) -> History:
        from .assemble import assemble_history

        return assemble_history(self._watcher)


def watch(model: Any = None, *, every: int | None = None, steps: tuple[int, int | None] = (1, None)) -> Watch:
    """Record the training run inside the ``with`` block: loss, learning rates, per module and per parameter statistics.

    ``model``: the ``nn.Module`` whose modules and parameters are named (None:
    the modules called in the block name themselves, the first one as ``""``).
    ``every``: sample every Nth optimizer step (None: adaptive, about 3 % of
    the run's time). ``steps``: ``(A, B)`` samples only steps A..B.

    >>> with gradtrace.watch(model, every=10) as w:    # doctest: +SKIP
    ...     train()
    >>> w.history.to_csv()                             # doctest: +SKIP
    """
    return Watch(model, every, steps)
