"""Full traces of chosen steps during a watched run (``--trace-steps``): the capture Session, opened for one step.

The Session is opened at the first module call of the step's forward (a
global module pre-hook: torch runs those from a copy of the hook table, so
installing the Session's own hooks there is safe, while an optimizer hook
could not) and handed that first call by hand, since its own hooks were not
in the copy. It is closed at the first chance after the step's optimizer
``step()`` (the next module call or ``backward()``, or the end of the watch):
removing an optimizer hook from inside one is not possible either.
"""

from __future__ import annotations

from typing import Any

from ..errors import GradtraceError

__all__ = ["StepTracer"]


class StepTracer:
    """Opens a capture Session for each step in ``steps`` and keeps its trace (``Trace.to_dict()``) by step."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.traces: dict[int, dict[str, Any]] = {}
        self.errors: dict[int, str] = {}
        self._armed: int | None = None
        self._session: Any = None
        self._step: int | None = None
        self._done = False

    def arm(self, step: int) -> None:
        """The next step is ``step``: open a Session at its first module call if it is one to trace."""
        if step in self.steps and step not in self.traces and self._session is None:
            self._armed = step

    def module_call(self, module: Any, args: Any, depth_zero: bool) -> None:
        if self._session is not None and self._done:
            self.finish()
        if self._armed is None or not depth_zero or self._session is not None:
            return
        from ..recorder.session import Session

        step, self._armed = self._armed, None
        session = Session(None, step=1, intercept_backward=True)
        try:
            session.__enter__()
        except GradtraceError as e:  # another capture is open (the user's own): this step goes untraced
            self.errors[step] = str(e)
            return
        self._session, self._step, self._done = session, step, False
        session.on_optimizer_done = lambda: setattr(self, "_done", True)
        session.modules.pre_hook(module, args)  # the Session's hooks were installed after torch copied the table

    def backward_call(self) -> None:
        if self._session is not None and self._done:
            self.finish()

    def finish(self) -> None:
        """Close the open Session, if any, and keep its trace."""
        session, step = self._session, self._step
        if session is None or step is None:
            return
        self._session = self._step = None
        try:
            session.close()
            if session.backward_recorded:
                self.traces[step] = session.build_trace().to_dict()
        except GradtraceError as e:
            self.errors[step] = str(e)
