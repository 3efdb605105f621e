"""Render every diagram the docs embed, from the example scripts: one command keeps them current.

    python3 scripts/docs_images.py            # rewrite docs/images/ (SVGs and the replay page)
    python3 scripts/docs_images.py --check    # exit 1 if a committed SVG differs from a fresh render

tests/test_docs.py runs the same check, so a stale diagram (or a change that
makes rendering non-deterministic) fails the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"

# (output name, example script, script arguments, render options)
DIAGRAMS: list[tuple[str, str, list[str], dict]] = [
    ("gradient_descent.svg", "gradient_descent.py", [], {}),
    ("training_loop.svg", "training_loop.py", ["--epochs", "1"], {}),
    ("sgd_full.svg", "sgd_minibatch.py", ["--mode", "full"], {}),  # top to bottom: about 800 pt wide, legible inline
    ("sgd_single.svg", "sgd_minibatch.py", ["--mode", "sgd"], {}),
    ("sgd_minibatch.svg", "sgd_minibatch.py", ["--mode", "minibatch"], {}),
    ("vanishing_sigmoid.svg", "vanishing_gradients.py", ["--net", "sigmoid", "--depth", "6"], {"show_values": False}),
    ("vanishing_residual.svg", "vanishing_gradients.py", ["--net", "residual", "--depth", "6"], {"show_values": False}),
    ("nan_hunt.svg", "nan_hunt.py", [], {}),
    ("transformer_block.svg", "transformer_block.py", [], {"show_values": False}),
    ("transformer_depth1.svg", "transformer_block.py", [], {"depth": 1}),
    ("training_loop.html", "training_loop.py", ["--epochs", "1"], {}),  # the replay page, linked from the tutorial
]


def render_all() -> dict[str, bytes]:
    """Every docs diagram, freshly rendered (the example scripts run in this process)."""
    import contextlib
    import io

    from gradtrace.render.options import RenderOptions
    from gradtrace.render.output import to_bytes
    from gradtrace.script import run_script

    out = {}
    for name, script, args, options in DIAGRAMS:
        with contextlib.redirect_stdout(io.StringIO()):
            trace = run_script(ROOT / "examples" / script, args)
        out[name] = to_bytes(trace, name.rsplit(".", 1)[1], RenderOptions(**options))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    fresh = render_all()
    stale = [n for n, data in fresh.items() if not (IMAGES / n).exists() or (IMAGES / n).read_bytes() != data]
    if args.check:
        for n in stale:
            print(f"stale: docs/images/{n} (run python3 scripts/docs_images.py)")
        return 1 if stale else 0
    IMAGES.mkdir(parents=True, exist_ok=True)
    for n, data in fresh.items():
        (IMAGES / n).write_bytes(data)
    print(f"wrote {len(fresh)} diagrams to docs/images/ ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
