"""Each mixing rule on hand-made sample sets with known alpha and distributions."""

import math

import pytest

from distill.mixing import alpha_for_iteration, distribution, kl_divergence, mix


def rows(spec: str, source: str) -> list[dict]:
    """'q1:cot q2:pot' -> training rows."""
    return [{"question_id": q, "strategy": s, "source": source} for q, s in (x.split(":") for x in spec.split())]


SELF = rows("q1:cot q1:pot q2:cot", "student")
TEACHER = rows("q1:cot q1:l2m q2:pot q3:cot q3:l2m q3:pot q4:cot", "teacher")
SAMPLES = ["cot"] * 6 + ["pot"] * 3 + ["l2m"] * 1  # every student sample this iteration


def test_standard_keeps_only_self_rows():
    result = mix(SELF, TEACHER, SAMPLES, "standard")
    assert result.rows == SELF and result.alpha == 0.0 and result.teacher_rows == 0


def test_all_adds_every_teacher_row():
    result = mix(SELF, TEACHER, SAMPLES, "all")
    assert len(result.rows) == 10 and result.alpha == pytest.approx(7 / 10)


def teacher_pairs(result) -> set[tuple[str, str]]:
    return {(r["question_id"], r["strategy"]) for r in result.rows if r["source"] == "teacher"}


def test_adaptive_adds_teacher_rows_for_every_question_and_strategy_the_student_did_not_solve():
    # As SIKeD's create-mixed-data.py: per strategy, the teacher's rows of the questions the student
    # did not solve with that strategy. q1 was solved with CoT and PoT: its L2M row stays; q2 with
    # CoT: its PoT row stays; q1:cot is the student's, so the teacher's q1:cot goes.
    result = mix(SELF, TEACHER, SAMPLES, "adaptive")
    assert teacher_pairs(result) == {("q1", "l2m"), ("q2", "pot"), ("q3", "cot"), ("q3", "l2m"), ("q3", "pot"),
                                     ("q4", "cot")}
    assert result.teacher_rows == 6 and result.alpha == pytest.approx(6 / 9)


def test_adaptive_question_adds_teacher_rows_only_for_questions_no_strategy_solved():
    result = mix(SELF, TEACHER, SAMPLES, "adaptive_question")
    assert {q for q, _ in teacher_pairs(result)} == {"q3", "q4"}
    assert result.teacher_rows == 4 and result.alpha == pytest.approx(4 / 7)


def test_the_two_adaptive_rules_read_what_was_solved_when_given():
    # q3 was solved with CoT in some sample even though no row of it reached D_self.
    pairs = {("q1", "cot"), ("q1", "pot"), ("q2", "cot"), ("q3", "cot")}
    result = mix(SELF, TEACHER, SAMPLES, "adaptive", solved_pairs=pairs)
    assert ("q3", "cot") not in teacher_pairs(result) and ("q3", "l2m") in teacher_pairs(result)
    result = mix(SELF, TEACHER, SAMPLES, "adaptive_question", solved_questions={"q1", "q2", "q3"})
    assert {q for q, _ in teacher_pairs(result)} == {"q4"}


def test_alpha_subsamples_teacher_to_target():
    result = mix(SELF, TEACHER, SAMPLES, "alpha", target_alpha=0.5, seed=1)
    assert result.teacher_rows == 3 and result.student_rows == 3 and result.alpha == 0.5
    again = mix(SELF, TEACHER, SAMPLES, "alpha", target_alpha=0.5, seed=1)
    assert again.rows == result.rows  # seeded


def test_alpha_with_too_few_teacher_rows_subsamples_students():
    result = mix(SELF, rows("q9:cot", "teacher"), SAMPLES, "alpha", target_alpha=0.5)
    assert result.teacher_rows == 1 and result.student_rows == 1 and result.alpha == 0.5
    assert result.notes


def test_alpha_extremes():
    assert mix(SELF, TEACHER, SAMPLES, "alpha", target_alpha=1.0).alpha == 1.0
    assert mix(SELF, TEACHER, SAMPLES, "alpha", target_alpha=0.0).alpha == 0.0
    with pytest.raises(ValueError, match="target teacher fraction"):
        mix(SELF, TEACHER, SAMPLES, "alpha")


def test_distributions_and_kl_are_recorded():
    result = mix(SELF, TEACHER, SAMPLES, "all")
    assert result.p_student_samples == {"cot": 0.6, "l2m": 0.1, "pot": 0.3}
    assert result.p_teacher == pytest.approx({"cot": 3 / 7, "l2m": 2 / 7, "pot": 2 / 7})
    assert result.p_train == pytest.approx({"cot": 0.5, "l2m": 0.2, "pot": 0.3})
    expected = 0.5 * math.log(0.5 / 0.6) + 0.2 * math.log(0.2 / 0.1) + 0.3 * math.log(0.3 / 0.3)
    assert result.kl_train_vs_student == pytest.approx(expected, rel=1e-4)


def test_kl_is_zero_for_equal_and_finite_for_unseen_strategy():
    p = distribution(["cot", "pot"])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-5)
    assert math.isfinite(kl_divergence(p, distribution(["cot"])))


def test_alpha_schedule_repeats_last_value():
    assert [alpha_for_iteration([0.9, 0.5, 0.2], t) for t in (1, 2, 3, 4)] == [0.9, 0.5, 0.2, 0.2]


def test_unknown_rule_rejected():
    with pytest.raises(ValueError, match="unknown mixing rule"):
        mix(SELF, TEACHER, SAMPLES, "bogus")


def test_teacher_rule_is_off_policy_teacher_rows_only():
    result = mix(SELF, TEACHER, SAMPLES, "teacher")
    assert result.student_rows == 0 and result.alpha == 1.0
    assert result.rows == [dict(r) for r in TEACHER]


def test_a_biased_mixture_keeps_one_row_per_question_by_the_priority_student_first_on_a_tie():
    """The reference mixes first and then biases the mixture: a question whose student solved it with
    l2m and whose teacher row is cot keeps only the cot row under a cot bias; a tie keeps the
    student's row."""
    student = rows("q1:l2m q2:cot q3:pot", "student")
    teacher = rows("q1:cot q2:cot q3:l2m q4:pot", "teacher")
    result = mix(student, teacher, ["l2m", "cot", "pot"], "all", biased="cot")
    kept = {(r["question_id"], r["strategy"], r["source"]) for r in result.rows}
    assert kept == {("q1", "cot", "teacher"), ("q2", "cot", "student"), ("q3", "pot", "student"),
                    ("q4", "pot", "teacher")}
    assert (result.student_rows, result.teacher_rows, result.biased) == (2, 2, "cot")
    unbiased = mix(student, teacher, ["l2m", "cot", "pot"], "all")
    assert len(unbiased.rows) == 7 and unbiased.biased is None
