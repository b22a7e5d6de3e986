"""Which validation step becomes the student: accuracy first, then the supervised loss (MI noise aside).

    pytest tests/test_best_checkpoint.py
"""

from distill.training.loop import _better, fit_loss


def val(accuracy, label, rationale, mi):
    return {"accuracy": accuracy, "loss_label": label, "loss_rationale": rationale, "loss_mi": mi,
            "loss": 0.5 * label + 0.5 * rationale + 0.1 * mi}


def test_fit_loss_is_the_weighted_supervised_terms():
    assert fit_loss(val(0.0, 2.0, 1.0, 25.0), alpha=0.2) == 0.2 * 2.0 + 0.8 * 1.0


def test_equal_accuracy_the_better_fit_wins_whatever_the_mi_term_says():
    first = val(0.0, 1.6, 1.10, 21.0)
    later = val(0.0, 1.6, 0.90, 24.0)  # fits better; its total loss is higher through the MI term alone
    assert later["loss"] > first["loss"]
    best = {"step": 2, "accuracy": 0.0, "loss": first["loss"], "fit_loss": fit_loss(first, 0.5)}
    assert _better(later["accuracy"], fit_loss(later, 0.5), best)
    assert not _better(first["accuracy"], fit_loss(first, 0.5) + 0.01, best)


def test_higher_accuracy_wins_over_any_loss():
    best = {"step": 2, "accuracy": 0.5, "loss": 1.0, "fit_loss": 0.1}
    assert _better(0.75, 9.0, best) and not _better(0.25, 0.0, best)
    assert _better(0.0, 1.0, None)


def test_a_best_recorded_before_fit_loss_existed_compares_with_its_loss():
    assert _better(0.0, 0.9, {"step": 4, "accuracy": 0.0, "loss": 1.0})


def test_rationale_mode_reads_each_answer_by_its_own_tag_as_evaluation_does():
    from types import SimpleNamespace

    from distill.training.validation import _judge

    questions = [SimpleNamespace(question_id=f"q{i}", gold=7.0, question="3 + 4?") for i in range(4)]
    completions = ["[cot]: 3 + 4 = 7.\nFinal answer: 7", "[pot]: answer = 3 + 4", "[l2m]: Final answer: 8", "7"]
    assert _judge("rationale", questions, completions, ["stop"] * 4) == [True, True, False, False]
    # label mode reads the first number whatever the text: only the bare "7" counts
    assert _judge("label", questions, completions, ["stop"] * 4) == [False, False, False, True]


def test_multiple_choice_validation_judges_the_named_choice():
    from types import SimpleNamespace

    from distill.choices import render_choices
    from distill.training.validation import _judge

    question = render_choices("Where do beavers get wood?", ["zoo", "wooded area", "sea"])
    questions = [SimpleNamespace(question_id=f"q{i}", gold=1.0, question=question) for i in range(3)]
    completions = ["wooded area", "(c)", "So the answer is (b) wooded area."]
    # a label is the choice's exact text, as DSS scores it; a rationale names its choice by letter or text
    assert _judge("label", questions, completions, ["stop"] * 3) == [True, False, False]
    assert _judge("rationale", questions, completions, ["stop"] * 3) == [True, False, True]


def test_sft_cannot_select_on_the_untrained_label_task():
    import pytest

    from distill.config import ConfigError, load_config

    assert load_config(None, ["train.loss.kind=sft"]).train.select_on == "rationale"
    with pytest.raises(ConfigError, match="select_on=label with train.loss.kind=sft"):
        load_config(None, ["train.loss.kind=sft", "train.select_on=label"])
