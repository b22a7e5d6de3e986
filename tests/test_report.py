"""The run report (`siked report RUN`): Markdown numbers and PNG plots from a hand-made run folder.

The run folder holds what the flow writes (config.yaml and summary.json per stage) with made-up
numbers, so every value the report shows can be checked against the input.
"""

from __future__ import annotations

import uuid

import pytest

from distill.config import load_config, to_yaml
from flows.cli import main
from flows.reports.report import RunNotFound, accuracy_rows, load_run, write_report
from storage.fs import exists, read_bytes, read_json, write_bytes, write_json
from storage.paths import RunLayout, join, layout_for_run_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DECODING = '{"max_tokens": 512, "n": 1, "temperature": 0.0, "top_p": 1.0}'
ACCURACY = {  # (stage, benchmark, mode) -> accuracy
    ("base", "arith-test", "rationale"): 0.10, ("base", "arith-test", "label"): 0.05,
    ("base", "gsm8k-test", "rationale"): 0.02, ("base", "gsm8k-test", "label"): 0.01,
    ("iter-00", "arith-test", "rationale"): 0.42, ("iter-00", "arith-test", "label"): 0.30,
    ("iter-00", "gsm8k-test", "rationale"): 0.04, ("iter-00", "gsm8k-test", "label"): 0.03,
    ("iter-01", "arith-test", "rationale"): 0.51, ("iter-01", "arith-test", "label"): 0.33,
    ("iter-01", "gsm8k-test", "rationale"): 0.06, ("iter-01", "gsm8k-test", "label"): 0.02,
    ("iter-02", "arith-test", "rationale"): 0.55, ("iter-02", "arith-test", "label"): 0.35,
    ("iter-02", "gsm8k-test", "rationale"): 0.07, ("iter-02", "gsm8k-test", "label"): 0.04,
}


def config_yaml() -> bytes:
    cfg = load_config({
        "name": "reporttest",
        "teacher": {"engine": {"model": "teacher-model-x"}, "strategies": ["cot", "l2m", "pot"]},
        "train": {"model": "student-model-y", "loss": {"kind": "dss_mi", "alpha": 0.5, "beta": 0.1}},
        "siked": {"iterations": 2, "mixing": "adaptive"},
        "eval": {"benchmarks": [{"name": "arith", "split": "test"}, {"name": "gsm8k", "split": "test"}]},
    })
    return to_yaml(cfg).encode("utf-8")


def eval_summaries(stage: str) -> list[dict]:
    out = []
    for (s, bench, mode), acc in ACCURACY.items():
        if s != stage:
            continue
        out.append({
            "benchmark": bench, "mode": mode, "n": 100, "accuracy": acc,
            "accuracy_by_strategy": {"cot": acc, "pot": acc / 2} if mode == "rationale" else {"label": acc},
            "strategy_histogram": {"cot": 60, "pot": 40} if mode == "rationale" else {"label": 100},
            "extraction_failure_rate": 0.125 if stage == "iter-01" else 0.0,
            "sandbox_timeout_rate": 0.0375 if stage == "iter-01" else 0.0,
            "protocol": {"model": f"runs/x/{stage}/student", "prompt_hash": f"ph-{stage}",
                         "parser_version": "parser-7", "decoding": DECODING},
        })
    return out


def data_summary(kept: dict[str, int]) -> dict:
    return {
        "per_strategy": {name: {"generated": 4 * k, "correct": 2 * k, "kept": k, "questions_solved": k}
                         for name, k in kept.items()},
        "verdicts": {"correct": 2 * sum(kept.values()), "wrong": 17, "timeout": 3, "no_answer": 5},
        "questions": 64, "questions_solved": 41, "rows": sum(kept.values()),
    }


def iteration_summary(i: int) -> dict:
    summary = {"iteration": i, "eval": eval_summaries(f"iter-{i:02d}"), "student": f"runs/x/iter-{i:02d}/student",
               "artifacts": {"student": f"runs/x/iter-{i:02d}/student"}, "train": {"steps": 12, "loss": 0.8123}}
    if i == 0:
        summary.update(data=data_summary({"cot": 50, "l2m": 30, "pot": 20}), alpha=1.0, train_rows=100)
    else:
        mix = {"rule": "adaptive", "target_alpha": None, "alpha": 0.375 if i == 1 else 0.25,
               "teacher_rows": 30 if i == 1 else 20, "student_rows": 50 if i == 1 else 60,
               "p_teacher": {"cot": 0.5, "l2m": 0.3, "pot": 0.2},
               "p_student_samples": {"cot": 0.6, "l2m": 0.1, "pot": 0.3},
               "p_train": {"cot": 0.55, "l2m": 0.2, "pot": 0.25},
               "kl_train_vs_student": 0.0731 if i == 1 else 0.0412, "notes": ["a note for the report"]}
        summary.update(data=data_summary({"cot": 30, "l2m": 5, "pot": 15}), mix=mix, alpha=mix["alpha"],
                       train_rows=80)
    return summary


def make_run(root: str, iterations=(0, 1, 2), base: bool = True, started: tuple[int, ...] = ()) -> RunLayout:
    layout = RunLayout(root=root, run_id="reporttest-0123456789")
    write_bytes(layout.config, config_yaml())
    if base:
        write_json(layout.summary("base"), {"stage": "base", "eval": eval_summaries("base")})
    for i in iterations:
        write_json(layout.summary(f"iter-{i:02d}"), iteration_summary(i))
    for i in started:  # a stage the run began but never finished
        write_bytes(join(layout.iteration_dir(i), "verified.parquet"), b"partial")
    return layout


def assert_png(url: str) -> None:
    data = read_bytes(url)
    assert data.startswith(PNG_MAGIC), url
    assert len(data) > 5000, f"{url}: only {len(data)} bytes"


def test_full_run_report_has_the_numbers_and_plots(tmp_path):
    layout = make_run(str(tmp_path / "runs"))
    path, md = write_report(layout)
    assert path == layout.report() and read_bytes(path).decode("utf-8") == md
    assert "reporttest-0123456789" in md and "**Status:** complete" in md
    for text in ("teacher-model-x", "student-model-y", "arith-test, gsm8k-test", "cot, l2m, pot",
                 "dss_mi (alpha 0.5, beta 0.1)", "adaptive"):
        assert text in md, text
    # accuracy table: base first, then iterations, with the change vs base and vs iteration 0
    assert "| arith-test | rationale | base | 100 | 10.0% | [5.5, 17.4] | – | – |" in md
    assert "| arith-test | rationale | iter 0 | 100 | 42.0% | [32.8, 51.8] | +32.0 pp | – |" in md
    assert "| arith-test | rationale | iter 2 | 100 | 55.0% | [45.2, 64.4] | +45.0 pp | +13.0 pp |" in md
    assert "| gsm8k-test | label | iter 1 | 100 | 2.0% | [0.6, 7.0] | +1.0 pp | -1.0 pp |" in md
    assert md.index("| arith-test | rationale | base |") < md.index("| arith-test | rationale | iter 0 |")
    # training data: rows, realised alpha, KL, strategy mix, verdicts, per-strategy counts
    assert "| 0 | teacher | teacher only | 100 | 100 | 0 | 1.000 | – | – |" in md
    assert "| 1 | teacher + student | adaptive | 80 | 30 | 50 | 0.375 | – | 0.0731 |" in md
    assert "| 2 | teacher + student | adaptive | 80 | 20 | 60 | 0.250 | – | 0.0412 |" in md
    assert "| 0 | teacher (P_L) | 50.0% | 30.0% | 20.0% |" in md
    assert "| 1 | student (P_SM) | 60.0% | 10.0% | 30.0% |" in md
    assert "| 1 | train (P_train) | 55.0% | 20.0% | 25.0% |" in md
    assert "| cot | 200 | 100 | 50 | 50 |" in md and "| pot | 60 | 30 | 15 | 15 |" in md
    assert "Verdicts: correct 200, wrong 17, no_answer 5, timeout 3" in md
    assert "Mixing note: a note for the report" in md and "Training: loss 0.8123, steps 12" in md
    # protocol and failure rates stored beside the numbers
    assert "ph-iter-01" in md and "parser-7" in md and "temperature=0.0" in md
    assert "| iter 1 | arith-test | rationale | 100 | 12.5% | 3.8% | cot 60 (51.0%), pot 40 (25.5%) |" in md
    # plots exist, are PNGs, and are linked relative to the report
    for name in ("accuracy.png", "strategy_mix.png"):
        assert f"]({name})" in md
        assert_png(join(layout.report_dir(), name))


def test_accuracy_rows_order_and_deltas(tmp_path):
    rows = accuracy_rows(load_run(make_run(str(tmp_path / "runs"))))
    arith = [r for r in rows if (r["benchmark"], r["mode"]) == ("arith-test", "label")]
    assert [r["stage"] for r in arith] == ["base", "iter 0", "iter 1", "iter 2"]
    assert arith[3]["vs_base"] == pytest.approx(0.30) and arith[3]["vs_iter0"] == pytest.approx(0.05)


def test_partial_run_reports_what_exists(tmp_path):
    """Killed during iteration 1: base summary not yet written, iteration 1 begun, 2 never started."""
    layout = make_run(str(tmp_path / "runs"), iterations=(0,), base=False, started=(1,))
    _, md = write_report(layout)
    assert "partial run" in md
    assert "- base: not started" in md
    assert "- iter-01: started, no summary.json" in md and "- iter-02: not started" in md
    assert "| arith-test | rationale | iter 0 | 100 | 42.0% | [32.8, 51.8] | – | – |" in md
    assert "| 0 | teacher | teacher only | 100 | 100 | 0 | 1.000 | – | – |" in md
    assert_png(join(layout.report_dir(), "accuracy.png"))
    assert_png(join(layout.report_dir(), "strategy_mix.png"))


def test_run_with_only_a_config_and_a_corrupt_summary(tmp_path):
    layout = make_run(str(tmp_path / "runs"), iterations=(), base=False)
    write_bytes(layout.summary("iter-00"), b"{not json")
    _, md = write_report(layout)
    assert "iter-00: summary.json is not valid JSON" in md
    assert "No stage has been evaluated yet." in md and "No iteration has finished yet." in md
    assert not exists(join(layout.report_dir(), "accuracy.png"))


def test_stale_plot_is_removed_when_its_data_is_gone(tmp_path):
    layout = make_run(str(tmp_path / "runs"))
    write_report(layout)
    for i in (0, 1, 2):
        write_json(layout.summary(f"iter-{i:02d}"), {**iteration_summary(i), "eval": []})
    write_json(layout.summary("base"), {"stage": "base", "eval": []})
    _, md = write_report(layout)
    assert "accuracy.png" not in md and not exists(join(layout.report_dir(), "accuracy.png"))
    assert exists(join(layout.report_dir(), "strategy_mix.png"))


def test_memory_run_root_and_the_cli(capsys):
    root = f"memory://report-{uuid.uuid4().hex[:8]}/runs"
    layout = make_run(root)
    assert main(["report", layout.run_dir]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == layout.report()
    md = read_bytes(printed).decode("utf-8")
    assert "| arith-test | rationale | iter 1 | 100 | 51.0% | [41.3, 60.6] | +41.0 pp | +9.0 pp |" in md
    assert_png(join(layout.report_dir(), "accuracy.png"))
    assert_png(join(layout.report_dir(), "strategy_mix.png"))


def test_cli_on_a_local_folder_and_on_no_run(tmp_path, capsys):
    layout = make_run(str(tmp_path / "runs"))
    assert main(["report", str(tmp_path / "runs" / layout.run_id) + "/"]) == 0
    assert capsys.readouterr().out.strip() == layout.report()
    assert main(["report", str(tmp_path / "nothing-here")]) == 1
    assert "no run at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFound):
        write_report(layout_for_run_dir(str(tmp_path / "empty")))


def test_layout_for_run_dir():
    assert layout_for_run_dir("memory://runs/abc/") == RunLayout(root="memory://runs", run_id="abc")
    assert layout_for_run_dir("s3://bucket/runs/abc").run_dir == "s3://bucket/runs/abc"
    assert layout_for_run_dir("/srv/runs/abc") == RunLayout(root="/srv/runs", run_id="abc")
    with pytest.raises(ValueError):
        layout_for_run_dir("memory://abc")


def index_steps(layout: RunLayout) -> None:
    """steps.json naming three steps: two whose outputs recorded what they cost, one made before
    steps recorded it."""
    from storage.artifacts import write_artifact
    from storage.step_store import write_index

    rows = [{"question_id": "q", "benchmark": "b", "source_id": "s", "shared": 1, "example": "e"}]
    steps = []
    for name, kind, iteration, info in (
            ("iter-00/generate", "generate", 0, {"tokens_generated": 12345, "seconds": 2.5}),
            ("iter-00/evaluate", "evaluate", 0, {"tokens_generated": 55, "seconds": 0.5}),
            ("problems/train", "problems", None, None)):
        folder = join(layout.root, "steps", kind, "k")
        output = join(folder, "out.parquet")
        write_artifact(output, rows, "overlaps", info=info)
        steps.append({"name": name, "kind": kind, "iteration": iteration, "key": "k", "dir": folder, "inputs": {},
                      "outputs": {"out": output}})
    write_index(layout, steps)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_the_report_sums_what_the_runs_steps_recorded_per_kind(tmp_path, where):
    root = str(tmp_path / "runs") if where == "local" else f"memory://report-{uuid.uuid4().hex[:8]}/runs"
    layout = make_run(root)
    index_steps(layout)
    _, md = write_report(layout)
    assert "| generate | 1 | 12,345 | – | – | 2.5 |" in md and "| evaluate | 1 | 55 | – | – | 0.5 |" in md
    assert "| total | 2 | 12,400 | – | – | 3.0 |" in md
    assert "Not counted, having no figures (not done yet, or made before steps recorded them): `problems/train`." in md
    compute = read_json(layout.compute)
    assert compute["total"]["tokens_generated"] == 12400 and compute["unrecorded"] == ["problems/train"]


def test_a_run_without_a_step_index_reports_no_compute(tmp_path):
    layout = make_run(str(tmp_path / "runs"))
    _, md = write_report(layout)
    assert "## Compute" not in md and not exists(layout.compute)
