"""The replay page at scale: write time, file size per node, open time and frame times in Chromium.

    python3 benchmarks/html_scale.py                  # 3k, 10k and 30k nodes
    python3 benchmarks/html_scale.py --sizes 30000 --shots /work/brief/shots

For each size: the seconds Python takes to write the page, its bytes (and bytes per node),
the seconds Chromium takes from navigation to a drawn, interactive page (median of
``--repeats`` loads), the element count there, the time to open one group, and the frame time
of wheel zooms with every group open (the worst case: all nodes painted). ``--shots`` saves
screenshots at three zoom levels (replay-overview, replay-mid, replay-close).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradtrace.render.html import to_html  # noqa: E402
from tests.big_trace import big_trace  # noqa: E402
from tests.browser import chromium_page  # noqa: E402

FRAMES = """async (n) => {
  const svg = document.getElementById('graph'), r = svg.getBoundingClientRect(), times = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    svg.dispatchEvent(new WheelEvent('wheel', {deltaY: i % 2 ? 120 : -120, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, cancelable: true}));
    await new Promise(res => requestAnimationFrame(res));  // the wheel's paint runs in this frame
    times.push(performance.now() - t);
  }
  return times;
}"""


def measure(n: int, repeats: int, shots: Path | None, out: Path) -> dict[str, float]:
    t = big_trace(n)
    t0 = time.perf_counter()
    text = to_html(t)
    write_s = time.perf_counter() - t0
    path = out / f"big{n}.html"
    path.write_text(text, encoding="utf-8")
    size = path.stat().st_size
    row = {"nodes": len(t.nodes), "write_s": write_s, "bytes": size, "bytes_per_node": size / len(t.nodes)}
    with chromium_page() as page:
        opens = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector("body[data-ready]", timeout=120_000)
            opens.append(time.perf_counter() - t0)
        row["open_s"] = statistics.median(opens)
        row["elements"] = page.evaluate("document.getElementsByTagName('*').length")
        if shots:
            page.screenshot(path=str(shots / "replay-close.png"))
        page.click("#fit")
        group = page.locator("#graph .group").first
        if group.count():
            t0 = time.perf_counter()
            group.click()  # opens it: that group and those around it are laid out again, and drawn
            row["open_group_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        page.click("#expandall")
        row["expand_all_s"] = time.perf_counter() - t0
        row["elements_all_open"] = page.evaluate("document.getElementsByTagName('*').length")
        frames = page.evaluate(FRAMES, 20)
        row["frame_ms_median"] = statistics.median(frames)
        row["frame_ms_max"] = max(frames)
        if shots:
            page.click("#collapseall")
            page.click("#fit")
            page.screenshot(path=str(shots / "replay-overview.png"))
            page.fill("#search", "stages.2.blocks.7.attn")
            page.keyboard.press("Enter")
            page.click("#zoomout")
            page.click("#zoomout")
            page.click("#zoomout")
            page.wait_for_timeout(200)
            page.screenshot(path=str(shots / "replay-mid.png"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3_000, 10_000, 30_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shots", type=Path, default=None, help="save screenshots at three zoom levels here (largest size)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'nodes':>7} {'write s':>8} {'MB':>6} {'B/node':>7} {'open s':>7} {'elements':>8} {'group s':>8} "
              f"{'all s':>6} {'elems all':>9} {'frame ms':>9} {'max ms':>7}")
        for k, n in enumerate(args.sizes):
            if args.shots:
                args.shots.mkdir(parents=True, exist_ok=True)
            r = measure(n, args.repeats, args.shots if k == len(args.sizes) - 1 else None, Path(tmp))
            print(f"{r['nodes']:>7} {r['write_s']:>8.2f} {r['bytes'] / 1e6:>6.1f} {r['bytes_per_node']:>7.0f} {r['open_s']:>7.2f} "
                  f"{r['elements']:>8} {r.get('open_group_s', float('nan')):>8.2f} {r['expand_all_s']:>6.2f} {r['elements_all_open']:>9} "
                  f"{r['frame_ms_median']:>9.1f} {r['frame_ms_max']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
