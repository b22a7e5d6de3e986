"""Mixing teacher data with the student's own correct solutions (docs/method.md, section 7).

Rules, for iteration t >= 1, given D_self (the student's correct samples, one per question and
strategy) and the teacher's distillation set D_teacher:

- `adaptive` (SIKeD's main rule, as its reference code `create-mixed-data.py` builds it): D_self
  plus the teacher rows of every (question, strategy) pair the student did not solve, strategy by
  strategy: a question the student solved with CoT still gets the teacher's L2M and PoT rows.
- `adaptive_question`: D_self plus teacher rows only for questions the student solved with no
  strategy at all (fewer teacher rows; this project's rule before it followed the reference code).
- `all`: D_self plus every teacher row.  `standard`: D_self only (on-policy).
- `teacher`: the teacher rows only, every iteration (off-policy: the baseline that asks whether the
  student's own samples help at all; they are still generated and counted, not trained on).
- `alpha`: a target teacher fraction a = |T| / (|T| + |S|). Teacher rows are subsampled to reach
  it; when there are too few, every teacher row is kept and D_self is subsampled instead.
  Subsampling is seeded, so the same inputs give the same set.

Whatever the rule, `mix` reports the realised alpha, the strategy distributions of teacher data
(P_L), student samples (P_SM) and the training set (P_train), and KL(P_train || P_SM).

Rows are dicts with at least `question_id` and `strategy` (TRAIN_EXAMPLES columns).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("cot", "l2m", "pot")
RULES = ("adaptive", "adaptive_question", "all", "standard", "teacher", "alpha")
KL_EPSILON = 1e-6  # smoothing so a strategy the student never chose gives a finite divergence


@dataclass
class MixResult:
    rows: list[dict[str, Any]]
    rule: str
    target_alpha: float | None
    alpha: float  # realised: teacher rows / all rows
    teacher_rows: int
    student_rows: int
    p_teacher: dict[str, float]  # P_L
    p_student_samples: dict[str, float]  # P_SM
    p_train: dict[str, float]  # P_train
    kl_train_vs_student: float  # KL(P_train || P_SM)
    notes: list[str] = field(default_factory=list)
    biased: str | None = None  # the mixture kept one row per question by this strategy's priority

    def stats(self) -> dict[str, Any]:
        """Everything but the rows, for the iteration's record."""
        return {k: v for k, v in self.__dict__.items() if k != "rows"}


def distribution(strategies: Iterable[str]) -> dict[str, float]:
    """Share of each strategy (cot, l2m, pot always present; others such as untagged samples too)."""
    counts = Counter(strategies)
    total = sum(counts.values())
    names = list(STRATEGIES) + sorted(set(counts) - set(STRATEGIES))
    return {name: (counts[name] / total if total else 0.0) for name in names}


def kl_divergence(p: Mapping[str, float], q: Mapping[str, float], eps: float = KL_EPSILON) -> float:
    """KL(p || q) over the union of keys, with q smoothed by `eps` and renormalised."""
    keys = sorted(set(p) | set(q))
    q_smooth = {k: q.get(k, 0.0) + eps for k in keys}
    norm = sum(q_smooth.values())
    return sum(p[k] * math.log(p[k] / (q_smooth[k] / norm)) for k in keys if p.get(k, 0.0) > 0)


def alpha_for_iteration(schedule: list[float], iteration: int) -> float:
    """Target teacher fraction for iteration t >= 1 (the schedule's last value repeats)."""
    if iteration < 1:
        raise ValueError("mixing starts at iteration 1")
    return schedule[min(iteration, len(schedule)) - 1]


def _subsample(rows: list[dict], k: int, rng: random.Random) -> list[dict]:
    """k rows chosen at random, kept in their original order."""
    if k >= len(rows):
        return list(rows)
    chosen = sorted(rng.sample(range(len(rows)), k))
    return [rows[i] for i in chosen]


def _alpha_mix(student: list[dict], teacher: list[dict], target: float, rng: random.Random,
               notes: list[str]) -> tuple[list[dict], list[dict]]:
    if target >= 1.0:
        return [], teacher
    if target <= 0.0 or not teacher:
        return student, []
    if not student:
        notes.append("no student rows: training on teacher rows alone")
        return [], teacher
    wanted_teacher = round(target * len(student) / (1.0 - target))
    if wanted_teacher <= len(teacher):
        return student, _subsample(teacher, wanted_teacher, rng)
    wanted_student = max(1, round(len(teacher) * (1.0 - target) / target))
    notes.append(f"too few teacher rows for alpha {target}: kept all {len(teacher)}, "
                 f"subsampled student rows {len(student)} -> {wanted_student}")
    return _subsample(student, wanted_student, rng), teacher


def mix(self_rows: Iterable[Mapping[str, Any]], teacher_rows: Iterable[Mapping[str, Any]],
        student_sample_strategies: Iterable[str], rule: str, *, target_alpha: float | None = None,
        solved_questions: Iterable[str] | None = None,
        solved_pairs: Iterable[tuple[str, str]] | None = None, seed: int = 0,
        biased: str | None = None) -> MixResult:
    """The next training set under `rule`; with `biased`, the mixture then keeps one row per
    question by that strategy's priority (SIKeD's biased chains: the reference mixes first and then
    biases the mixture, `create-mixed-data.py`; a student row wins a tie with a teacher row).

    `self_rows`: D_self (correct student rows); `teacher_rows`: the teacher distillation set;
    `student_sample_strategies`: the strategy of every student sample generated this iteration
    (correct or not), for P_SM; `solved_pairs`: (question, strategy) of every correct student
    sample (default: those in D_self), for `adaptive`; `solved_questions`: questions with at least
    one correct student sample (default: those in D_self), for `adaptive_question`.
    """
    if rule not in RULES:
        raise ValueError(f"unknown mixing rule {rule!r}; choose one of {', '.join(RULES)}")
    student = [dict(r) for r in self_rows]
    all_teacher = [dict(r) for r in teacher_rows]
    teacher = all_teacher
    notes: list[str] = []
    if rule == "adaptive":
        pairs = set(solved_pairs) if solved_pairs is not None else {(r["question_id"], r["strategy"]) for r in student}
        teacher = [r for r in teacher if (r["question_id"], r["strategy"]) not in pairs]
    elif rule == "adaptive_question":
        solved = set(solved_questions) if solved_questions is not None else {r["question_id"] for r in student}
        teacher = [r for r in teacher if r["question_id"] not in solved]
    elif rule == "standard":
        teacher = []
    elif rule == "teacher":
        student = []
    elif rule == "alpha":
        if target_alpha is None or not 0.0 <= target_alpha <= 1.0:
            raise ValueError(f"alpha mixing needs a target teacher fraction in [0, 1], got {target_alpha}")
        student, teacher = _alpha_mix(student, teacher, target_alpha, random.Random(seed), notes)
    rows = student + teacher
    if biased:
        from distill.distill_set import bias

        rows = bias(rows, biased)
        student = [r for r in rows if r.get("source") != "teacher"]
        teacher = [r for r in rows if r.get("source") == "teacher"]
    p_student = distribution(student_sample_strategies)
    p_train = distribution(r["strategy"] for r in rows)
    return MixResult(
        rows=rows, rule=rule, target_alpha=target_alpha if rule == "alpha" else None,
        alpha=len(teacher) / len(rows) if rows else 0.0, teacher_rows=len(teacher), student_rows=len(student),
        p_teacher=distribution(r["strategy"] for r in all_teacher),
        p_student_samples=p_student, p_train=p_train,
        kl_train_vs_student=kl_divergence(p_train, p_student) if rows else 0.0, notes=notes, biased=biased,
    )

