"""The watch page at scale: Python render time, file size per step×module, and in Chromium the time
to first draw and to answer a heat-map click, a metric change and a step (issue #16: 500 steps × 100
modules draws in < 1 s; 5,000 steps × 300 modules stays responsive).

    PYTHONPATH=. python3 benchmarks/watch_page.py            # both sizes
    PYTHONPATH=. python3 benchmarks/watch_page.py --quick    # 500 × ~80 only

Times are medians of ``--repeats`` page loads in one Chromium; the histories are the synthetic ones
of tests/watch_history.py (the same shape as the engine's: modules and parameters, NaN run, events).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradtrace.render.watch_html import to_watch_html  # noqa: E402
from tests.browser import chromium_page  # noqa: E402
from tests.watch_history import build_history  # noqa: E402

TIMED = """what => {
  const t = performance.now();
  if (what === "heat") {
    const c = document.getElementById("heat"), r = c.getBoundingClientRect();
    c.dispatchEvent(new MouseEvent("click", {clientX: r.left + r.width * 0.3, clientY: r.top + 20, bubbles: true}));
  } else if (what === "metric") {
    const s = document.getElementById("metric");
    s.value = "out_rms";
    s.dispatchEvent(new Event("change"));
  } else {
    document.body.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight", bubbles: true}));
  }
  void document.body.offsetHeight;
  return performance.now() - t;
}"""
SIZES = {"500 steps, 6 blocks": (500, 6), "5000 steps, 25 blocks": (5000, 25)}


def measure(steps: int, layers: int, repeats: int) -> dict[str, float]:
    t = time.perf_counter()
    history = build_history(steps=steps, layers=layers, nan_at=steps * 3 // 5 + 1, skipped_at=41)
    built = time.perf_counter() - t
    t = time.perf_counter()
    page = to_watch_html(history)
    rendered = time.perf_counter() - t
    modules, params = len(history["modules"]), len(history["params"])
    path = Path(tempfile.mkdtemp()) / "run.html"
    path.write_text(page, encoding="utf-8")
    size = path.stat().st_size
    loads, first, clicks, metric, stepping = [], [], [], [], []
    with chromium_page() as p:
        for _ in range(repeats):
            t = time.perf_counter()
            p.goto(path.as_uri())
            p.wait_for_selector("body[data-ready='1']", timeout=120_000)
            loads.append(time.perf_counter() - t)
            first.append(float(p.get_attribute("body", "data-render-ms")) / 1000)
            # In-page times: the handler's own work, drawing and layout included (canvas drawing is
            # synchronous; reading offsetHeight forces the layout), without Playwright's round trips.
            before = p.get_attribute("body", "data-step")
            clicks.append(p.evaluate(TIMED, "heat") / 1000)
            if p.get_attribute("body", "data-step") == before:
                raise SystemExit("the heat-map click selected nothing: the benchmark measured no work")
            metric.append(p.evaluate(TIMED, "metric") / 1000)
            stepping.append(p.evaluate(TIMED, "step") / 1000)
    med = statistics.median
    return {"steps": steps, "modules": modules, "params": params, "build_s": built, "html_s": rendered, "mb": size / 1e6,
            "bytes_per_step_module": size / (steps * modules), "load_s": med(loads), "script_s": med(first),
            "heat_click_s": med(clicks), "metric_s": med(metric), "step_s": med(stepping)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 500-step history")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{'history':24} {'modules':>7} {'params':>6} {'html s':>7} {'MB':>7} {'B/step·module':>13} "
          f"{'load s':>7} {'script s':>8} {'heat click s':>12} {'metric s':>8} {'step s':>7}")
    for name, (steps, layers) in SIZES.items():
        if args.quick and steps > 500:
            continue
        r = measure(steps, layers, args.repeats)
        print(f"{name:24} {r['modules']:7d} {r['params']:6d} {r['html_s']:7.2f} {r['mb']:7.1f} {r['bytes_per_step_module']:13.0f} "
              f"{r['load_s']:7.2f} {r['script_s']:8.2f} {r['heat_click_s']:12.3f} {r['metric_s']:8.3f} {r['step_s']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
