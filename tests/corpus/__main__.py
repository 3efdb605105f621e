"""``python3 -m tests.corpus [--seeds N]``: run the whole diagnosis corpus and print precision and recall."""

from __future__ import annotations

import argparse
import time

from . import CASES, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per case (default 5)")
    parser.add_argument("--case", action="append", default=None, help="only this case (repeatable)")
    args = parser.parse_args()
    cases = tuple(c for c in CASES if args.case is None or c.name in args.case)
    start = time.perf_counter()
    result = score(cases, tuple(range(args.seeds)))
    healthy = sum(c.healthy for c in cases)
    print(f"diagnosis corpus: {healthy} healthy architectures and {len(cases) - healthy} planted faults, {args.seeds} seeds each "
          f"({time.perf_counter() - start:.0f} s)")
    print(f"precision {result.precision:.3f}  ({result.true_pos} true findings, {len(result.false_pos)} false warnings/alarms)")
    print(f"recall    {result.recall:.3f}  ({result.faults - len(result.missed)} of {result.faults} planted faults found at the right node)")
    print(f"notes     {result.notes} (informational, not counted)")
    for line in result.false_pos:
        print("  false:", line)
    for line in result.missed:
        print("  missed:", line)


if __name__ == "__main__":
    main()
