"""The label-mode answer budget: derived from the gold labels, shared by evaluation and checkpoint
selection, and a set budget that cuts gold labels is said in the step's log.

DSS's SVAMP labels are equations; the longest of its test split, `( ( 301.0 - 157.0 ) / 144.0 )`,
takes 24 SmolLM2 tokens, more than the 16 the label budget used to be.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from distill.config import EngineConfig, RunConfig, TrainConfig, VerifyConfig, load_config
from distill.engines.base import Completion
from distill.label_budget import LABEL_MARGIN, gold_labels, label_budget, shortfall_warning

LONG = "( ( 301.0 - 157.0 ) / 144.0 )"  # DSS's SVAMP test label: 24 SmolLM2 tokens, value 1
PROBLEMS = [
    {"id": "dss_svamp/test/0", "benchmark": "dss_svamp", "split": "test", "source": "svamp_test.json",
     "question": "Jack had 301 marbles and lost 157. He shared the rest among 144 friends. How many did each get?",
     "answer": 1.0, "answer_text": LONG, "reference": LONG},
    {"id": "dss_svamp/test/1", "benchmark": "dss_svamp", "split": "test", "source": "svamp_test.json",
     "question": "Ann had 8 pens and gave away 5. How many pens does she have?",
     "answer": 3.0, "answer_text": "( 8.0 - 5.0 )", "reference": "( 8.0 - 5.0 )"},
]


@pytest.fixture(scope="module")
def tokenizer(builtin_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_path)


def tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class GoldLabelEngine:
    """Answers each label prompt with its question's gold label as the dataset writes it, cut at
    `max_tokens` tokens of the student's tokenizer, as generation cuts an answer."""

    name, version, model = "gold", "0", "gold"

    def __init__(self, tokenizer):
        self.tokenizer, self.budgets = tokenizer, []

    def generate(self, requests, sampling, lora_path=None):
        self.budgets.append(sampling.max_tokens)
        out = []
        for request in requests:
            label = next(p["answer_text"] for p in PROBLEMS if p["id"] == request.question_id)
            ids = tokens(self.tokenizer, label)
            cut = len(ids) > sampling.max_tokens
            text = self.tokenizer.decode(ids[: sampling.max_tokens])
            out.append([Completion(text, 10, min(len(ids), sampling.max_tokens), "length" if cut else "stop")])
        return out

    def close(self):
        pass


def evaluate_label_mode(tmp_path, monkeypatch, model_path, tokenizer, label_max_tokens):
    """The evaluation step's body on PROBLEMS in label mode, with the gold-label engine: its rows."""
    import distill.engines
    from storage.artifacts import read_artifact, write_artifact
    from tasks.jobs.evaluate import EvalJob, evaluate_into

    engine = GoldLabelEngine(tokenizer)
    monkeypatch.setattr(distill.engines, "make_engine", lambda cfg, path, data_dir=None: engine)
    problems, output = str(tmp_path / "problems.parquet"), str(tmp_path / "dss_svamp-test-label.parquet")
    write_artifact(problems, PROBLEMS, "problems", config_hash="problems")
    job = EvalJob(model=str(model_path), engine=EngineConfig(kind="transformers"), verify=VerifyConfig(workers=1),
                  max_tokens=64, label_max_tokens=label_max_tokens, key="evaluate", label="base",
                  targets=(("dss_svamp-test", problems, "label", output),))
    evaluate_into(job)
    return read_artifact(output, "predictions").to_pylist(), engine.budgets


def test_a_gold_label_longer_than_16_tokens_is_scored_correct_under_the_default_budget(
        tmp_path, monkeypatch, builtin_model_path, tokenizer):
    assert len(tokens(tokenizer, LONG)) == 24
    rows, budgets = evaluate_label_mode(tmp_path, monkeypatch, builtin_model_path, tokenizer,
                                        RunConfig().eval.label_max_tokens)
    assert budgets == [24 + LABEL_MARGIN]  # the longest gold label of the set, plus the margin
    assert [(r["question_id"], r["verdict"], r["predicted"]) for r in rows] == [
        ("dss_svamp/test/0", "correct", 1.0), ("dss_svamp/test/1", "correct", 3.0)]


def test_a_set_budget_that_cuts_gold_labels_is_counted_once_in_the_steps_log(
        tmp_path, monkeypatch, builtin_model_path, tokenizer, capsys):
    rows, budgets = evaluate_label_mode(tmp_path, monkeypatch, builtin_model_path, tokenizer, 16)
    assert budgets == [16]  # a number the user sets still wins
    assert [r["verdict"] for r in rows] == ["wrong", "correct"]  # the cut equation reads as 301
    log = capsys.readouterr().out
    line = ("eval.label_max_tokens=16: 1 of 2 gold labels of dss_svamp-test need more tokens (up to 24); "
            "they cannot be scored correct")
    assert log.count(line) == 1, log


def test_the_budget_covers_the_label_in_either_training_format():
    """An evaluation does not know its model's training format: the bare number (`siked`) and the
    label as the dataset writes it (`dss`) both count; a choice question has its choice's text."""
    assert gold_labels(PROBLEMS[0]) == ["1", LONG]
    assert gold_labels({"answer": float("nan"), "answer_text": "wooded area"}) == ["wooded area"]
    assert label_budget("auto", [3, 24]) == 24 + LABEL_MARGIN and label_budget(16, [3, 24]) == 16
    assert shortfall_warning("auto", [3, 24], "x") is None and shortfall_warning(24, [3, 24], "x") is None


# --------------------------------------------------------------------------- validation (train.select_on: label)


class ScriptedStudent:
    """A stand-in for the student's `generate`: writes a scripted answer to each label prompt, cut at
    `max_new_tokens` (then the end-of-sequence token when it fits), as greedy generation returns it."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        self.tokenizer, self.answers, self.budgets = tokenizer, answers, []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
        import torch

        self.budgets.append(max_new_tokens)
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            answer = next(a for question, a in self.answers.items() if question in prompt)
            new = tokens(self.tokenizer, answer)[:max_new_tokens]
            rows.append(new + [self.tokenizer.eos_token_id] * (len(new) < max_new_tokens))
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def validation_accuracy(tokenizer, rows, answers, options, fmt="dss"):
    """Label-mode validation accuracy of the scripted student on `rows` (all held out)."""
    import torch

    from distill.training.data import build_texts
    from distill.training.validation import evaluate

    texts, _ = build_texts(rows, fmt)
    cfg = TrainConfig(format=fmt, select_on="label", val_fraction=0.5)
    dist_ = SimpleNamespace(rank=0, world=1, enabled=False, device="cpu", all_sum=lambda values: values)
    student = ScriptedStudent(tokenizer, answers)
    val = evaluate(torch.nn.Linear(1, 1), student, [], texts, tokenizer, cfg, options, dist_,
                   contextlib.nullcontext())
    return val["accuracy"], student.budgets


def dss_rows(problems):
    return [{"question_id": p["id"], "question": p["question"], "gold": p["answer"], "strategy": "cot",
             "text": "We subtract, then divide.", "label_text": p["answer_text"]} for p in problems]


def test_label_validation_budgets_as_evaluation_does(tokenizer):
    from distill.training.data import build_texts
    from distill.training.loop import LoopOptions
    from distill.training.validation import label_validation_budget

    perfect = {p["question"]: p["answer_text"] for p in PROBLEMS}
    accuracy, budgets = validation_accuracy(tokenizer, dss_rows(PROBLEMS), perfect, LoopOptions())
    assert budgets == [24 + LABEL_MARGIN] and accuracy == 1.0
    accuracy, budgets = validation_accuracy(tokenizer, dss_rows(PROBLEMS), perfect, LoopOptions(label_max_tokens=16))
    assert budgets == [16] and accuracy == 0.5
    # what the training log says once, before the first step
    texts, _ = build_texts(dss_rows(PROBLEMS), "dss")
    assert label_validation_budget(texts, tokenizer, LoopOptions(label_max_tokens=16)) == (16, (
        "eval.label_max_tokens=16: 1 of 2 gold labels of the validation questions need more tokens (up to 24); "
        "they cannot be scored correct"))


def test_label_validation_honours_the_relative_tolerance(tokenizer):
    from distill.training.loop import LoopOptions

    problems = [{**PROBLEMS[1], "answer": 7.00005, "answer_text": "7.00005"}]
    close = {problems[0]["question"]: "7.0001"}
    assert validation_accuracy(tokenizer, dss_rows(problems), close, LoopOptions(rel_tol=1e-3))[0] == 1.0
    assert validation_accuracy(tokenizer, dss_rows(problems), close, LoopOptions())[0] == 0.0


def test_label_selection_reads_the_evaluation_budget_and_tolerance(tmp_path):
    """The training step's job carries them when it selects on label accuracy (and so its key moves
    with them), never when it selects on rationale accuracy."""
    from flows.run_setup import run_layout
    from tasks.pipeline import pipeline_steps

    def train_step(*overrides):
        cfg = load_config(None, [f"runs_root={tmp_path}", "siked.iterations=0", *overrides])
        return pipeline_steps(cfg, run_layout(cfg))["iter-00/train"]

    label = train_step("train.select_on=label")
    assert (label.job["label_max_tokens"], label.job["rel_tol"]) == ("auto", 1e-6)
    assert train_step("train.select_on=label", "eval.label_max_tokens=16").key != label.key
    assert train_step("train.select_on=label", "verify.rel_tol=0.001").key != label.key
    rationale = train_step()
    assert set(rationale.job) == {"cfg"}
    assert train_step("eval.label_max_tokens=16").key == rationale.key
