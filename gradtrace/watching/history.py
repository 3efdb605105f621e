"""The history of a watched run: plain data (no torch), as JSON, CSV or a page.

A :class:`History` wraps the document described in ``docs/watch.md`` (format
``gradtrace-watch``, version 1): the sampled step numbers, and beside them, in
lists aligned with ``steps``, the loss, the learning rates and per module and
per parameter metrics; the events (alarms, GradScaler's skipped steps,
warnings) and full step traces. Numbers that are NaN or infinite are written as
the strings ``"NaN"``, ``"inf"``, ``"-inf"`` (JSON has no NaN); a missing
sample is ``null``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterator

from ..errors import GradtraceError

__all__ = ["FORMAT", "VERSION", "WATCH_FORMATS", "History", "json_number", "watch_format_for"]

FORMAT = "gradtrace-watch"
VERSION = 1
#: What ``gradtrace watch -o`` can write, by suffix.
WATCH_FORMATS = ("html", "json", "csv")


def json_number(x: float | None) -> float | str | None:
    """A number as the history writes it: NaN and the infinities as strings, None as null.

    >>> json_number(float("nan")), json_number(-math.inf), json_number(2.5), json_number(None)
    ('NaN', '-inf', 2.5, None)
    """
    if x is None:
        return None
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def printable(name: str) -> str:
    """``name`` as UTF-8 can write it: a lone surrogate (torch accepts any str as a module name) becomes ``\\ud83d``."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def read_number(x: Any) -> float | None:
    """The inverse of :func:`json_number`."""
    if x is None:
        return None
    if isinstance(x, str):
        return {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}[x]
    return float(x)


def write_text(path: Path, text: str) -> Path:
    """``text`` at ``path`` the way :func:`gradtrace.render.output.write_bytes` puts any output: a regular file
    atomically (whole or not at all, its mode and owner kept), ``-`` to standard output, a device, a FIFO or
    ``/dev/stdout`` written through."""
    from ..render.output import write_bytes

    write_bytes(path, text.encode("utf-8"))
    return path


def watch_format_for(path: Path, fmt: str | None) -> str:
    """The format of ``path``: ``fmt`` when given, else from the suffix (.html, .json, .csv), else html (a name without
    a suffix, ``/dev/stdout``: as ``--help`` says, and as ``render`` takes one for svg).

    >>> watch_format_for(Path("run.csv"), None), watch_format_for(Path("/dev/stdout"), None)
    ('csv', 'html')
    """
    if fmt is not None:
        if fmt not in WATCH_FORMATS:
            raise GradtraceError(f"unknown watch format {fmt!r} (must be one of {list(WATCH_FORMATS)})")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        return "html"
    if suffix == "htm":
        suffix = "html"
    if suffix not in WATCH_FORMATS:
        raise GradtraceError(f"cannot tell the format of {str(path)!r} from its suffix {path.suffix!r}: use .html, .json "
                             f"or .csv, or --format {'|'.join(WATCH_FORMATS)}")
    return suffix


class History:
    """What ``gradtrace watch`` / :func:`gradtrace.watch` recorded over a run.

    >>> with gradtrace.watch(model, every=10) as w:      # doctest: +SKIP
    ...     train(model)
    >>> w.history.save("run.json")                       # doctest: +SKIP
    """

    def __init__(self, data: dict[str, Any]) -> None:
        if data.get("format") != FORMAT:
            raise GradtraceError(f"not a gradtrace watch history (format {data.get('format')!r}, expected {FORMAT!r})")
        self._data = data

    # -- reading ----------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """The sampled optimizer-step numbers (1-based)."""
        return list(self._data["steps"])

    @property
    def steps_run(self) -> int:
        return int(self._data["steps_run"])

    @property
    def first_alarm(self) -> int | None:
        """The first step with an alarm (non-finite loss, gradient or activation), or None."""
        return self._data.get("first_alarm")

    @property
    def events(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self._data.get("events", [])]

    @property
    def loss(self) -> list[float | None]:
        """The loss of each sampled step (NaN as float NaN)."""
        return [read_number(x) for x in self._data["loss"]]

    def module(self, path: str, metric: str) -> list[float | None]:
        """One module's metric over the sampled steps (``out_rms``, ``out_nonfinite``, ``grad_norm``)."""
        try:
            return [read_number(x) for x in self._data["series"]["module"][path][metric]]
        except KeyError:
            raise GradtraceError(f"no metric {metric!r} of module {path!r} in this history (modules: "
                                 f"{sorted(self._data['series']['module'])[:20]})") from None

    def param(self, name: str, metric: str) -> list[float | None]:
        """One parameter's metric over the sampled steps (``grad_norm``, ``grad_rms``, ``value_norm``, ``update_ratio``,
        ``grad_nonfinite``)."""
        try:
            return [read_number(x) for x in self._data["series"]["param"][name][metric]]
        except KeyError:
            raise GradtraceError(f"no metric {metric!r} of parameter {name!r} in this history (parameters: "
                                 f"{sorted(self._data['series']['param'])[:20]})") from None

    @property
    def traces(self) -> dict[int, Any]:
        """The full step traces embedded, as :class:`gradtrace.Trace` by step number."""
        from ..steptrace import Trace

        return {int(k): Trace.from_json(json.dumps(v)) for k, v in self._data.get("traces", {}).items()}

    # -- writing ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The history document (see ``docs/watch.md``): plain JSON values only."""
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self._data, indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """A long table, one value a row: ``step,series,name,metric,value`` (pandas-free; pivot it as you like).

        ``series`` is ``run`` (loss, lr, clip), ``module`` or ``param``. With several optimizers each one's loss
        has a row of its own, named by the optimizer (``opt1``), beside the lead's unnamed one.
        """
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("step", "series", "name", "metric", "value"))
        for row in self._rows():
            writer.writerow(row)
        return buf.getvalue()

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        d = self._data
        steps = d["steps"]

        def cell(x: Any) -> Any:
            return "" if x is None else printable(x) if isinstance(x, str) else x

        for i, s in enumerate(steps):
            yield s, "run", "", "loss", cell(d["loss"][i])
            for key, values in d.get("losses", {}).items():  # several optimizers: each one's own loss, named
                yield s, "run", cell(key), "loss", cell(values[i])
            for key, values in d.get("lr", {}).items():
                yield s, "run", cell(key), "lr", cell(values[i])
            if "clip" in d:
                yield s, "run", "", "clip_before", cell(d["clip"]["before"][i])
                yield s, "run", "", "clip_after", cell(d["clip"]["after"][i])
            for kind in ("module", "param"):
                for name, metrics in d["series"][kind].items():
                    for metric, values in metrics.items():
                        yield s, kind, cell(name), metric, cell(values[i])

    def save(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write the history to ``path`` as JSON, CSV or the HTML page (format from the suffix unless ``fmt``): a
        regular file whole or not at all, ``-``, a device or a FIFO written through (as ``render`` writes)."""
        path = Path(path)
        kind = watch_format_for(path, fmt)
        return write_text(path, self.to_json() if kind == "json" else self.to_csv() if kind == "csv" else self.to_html())

    def to_html(self) -> str:
        """The offline page (``gradtrace.render.watch_html``)."""
        try:
            from ..render.watch_html import to_watch_html
        except ImportError as e:
            raise GradtraceError(f"the watch page is not available in this gradtrace ({e}); write .json or .csv") from None
        return to_watch_html(self.to_dict())

    def __repr__(self) -> str:
        return (f"History({self._data.get('script')!r}, steps_run={self.steps_run}, sampled={len(self.steps)}, "
                f"first_alarm={self.first_alarm})")
