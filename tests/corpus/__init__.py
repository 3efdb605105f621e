"""The diagnosis corpus and its score: ``python3 -m tests.corpus`` prints precision and recall."""

from __future__ import annotations

from dataclasses import dataclass, field

from gradtrace.diagnose import NOTE, Finding

from .cases import CASES, Case

__all__ = ["CASES", "Case", "Result", "score"]


@dataclass
class Result:
    """Counts over a corpus run: a finding is a true positive when it answers a planted fault at its node."""

    true_pos: int = 0
    false_pos: list[str] = field(default_factory=list)  # "case/seed: kind at label"
    missed: list[str] = field(default_factory=list)  # "case/seed"
    faults: int = 0
    notes: int = 0

    @property
    def precision(self) -> float:
        total = self.true_pos + len(self.false_pos)
        return self.true_pos / total if total else 1.0

    @property
    def recall(self) -> float:
        return (self.faults - len(self.missed)) / self.faults if self.faults else 1.0


def judge(case: Case, seed: int, result: Result) -> list[Finding]:
    """Trace ``case`` at ``seed``, diagnose it, and add its counts to ``result``."""
    trace = case.build(seed)
    findings = trace.diagnose()
    found = False
    for f in findings:
        if f.severity == NOTE:
            result.notes += 1
            continue
        n = trace.node(f.node)
        if f.kind in case.kinds and case.at(n):
            result.true_pos += 1
            found = True
        else:
            result.false_pos.append(f"{case.name}/{seed}: {f.kind} at {n.label} ({n.module or 'top'}): {f.message}")
    if not case.healthy:
        result.faults += 1
        if not found:
            result.missed.append(f"{case.name}/{seed}: " + "; ".join(f"{f.kind} at {trace.node(f.node).label}" for f in findings))
    return findings


def score(cases: tuple[Case, ...] = CASES, seeds: tuple[int, ...] = (0, 1, 2)) -> Result:
    result = Result()
    for case in cases:
        for seed in seeds:
            judge(case, seed, result)
    return result
