"""Experiments: the file, the plan that shares steps between arms, the statistics from outcomes, and
a tiny two-arm experiment end to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest

from distill.config import ConfigError
from distill.significance import sign_flip_p
from flows.cli import main
from flows.experiment_file import read_experiment
from flows.reports.experiment_results import accuracy_rows, comparison_rows
from storage.artifacts import read_artifact
from tests.test_flow import tiny_run_overrides

REPO = Path(__file__).resolve().parents[1]


def write_experiment(folder: Path, arms: dict, overrides: list[str], seeds=(1,), baseline="short", **extra) -> Path:
    path = folder / "experiment.yaml"
    spec = {"name": "tiny", "base": "configs/quickstart.yaml", "overrides": overrides, "seeds": list(seeds),
            "baseline": baseline, "arms": arms, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the file


@pytest.mark.parametrize(("change", "message"), [
    ({"baseline": "nope"}, "baseline 'nope' is not an arm"),
    ({"arms": {"a b": []}, "baseline": "a b"}, "arm name 'a b'"),
    ({"base": "configs/none.yaml"}, "found neither under the repository root"),
    ({"arms": {"short": ["train.lr=-1"]}}, "arm 'short' (seed 1)"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"colour": "red"}, "colour"),
    ({"holm_family": "first"}, "holm_family: Value error, unknown family 'first' (known: final, stage, all)"),
])
def test_bad_experiment_files_are_refused_naming_the_problem(tmp_path, change, message):
    path = tmp_path / "e.yaml"
    spec = {"name": "e", "base": "configs/quickstart.yaml", "seeds": [1], "baseline": "short",
            "arms": {"short": [], "long": []}, **change}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_experiment(path)
    assert str(path) in str(info.value)


def test_each_arm_and_seed_is_the_base_then_overrides_then_the_arm_then_the_seed(tmp_path):
    path = write_experiment(tmp_path, {"short": ["eval.max_tokens=8"], "long": []}, ["eval.max_tokens=32"],
                            seeds=(3, 4))
    runs = read_experiment(path).runs
    assert [(r.arm, r.seed) for r in runs] == [("short", 3), ("short", 4), ("long", 3), ("long", 4)]
    assert [r.cfg.eval.max_tokens for r in runs] == [8, 8, 32, 32]
    # the seed reaches the student's training and sampling, not the teacher's engine
    assert [(r.cfg.seed, r.cfg.train.seed, r.cfg.siked.engine.seed, r.cfg.teacher.engine.seed) for r in runs][:2] \
        == [(3, 3, 3, 0), (4, 4, 4, 0)]
    assert runs[0].cfg.name == "tiny-short-s3"


def test_shipped_experiment_files_are_valid_and_plan(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SIKED_HOME", str(tmp_path))
    files = sorted((REPO / "experiments").glob("**/*.yaml"))
    assert {f.name for f in files} >= {"siked_vs_single_pass.yaml", "mixing.yaml", "objectives.yaml"}
    for f in files:
        experiment = read_experiment(f)
        assert experiment.spec.baseline in experiment.spec.arms
        assert main(["plan", str(f), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {(r["arm"], r["seed"]) for r in rows} == {(r.arm, r.seed) for r in experiment.runs}


def test_the_mixing_experiments_compare_free_self_generation_with_the_references_forced_one(capsys, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setenv("SIKED_HOME", str(tmp_path))
    for path in (REPO / "experiments/mixing.yaml", REPO / "experiments/gpu/mixing.yaml"):
        experiment = read_experiment(path)
        modes = {r.arm: r.cfg.siked.self_generation for r in experiment.runs}
        assert modes.pop("free") == "free" and set(modes.values()) == {"forced"}, path
        free, = [r for r in experiment.runs if r.arm == "free"]
        assert free.cfg.siked.mixing == "adaptive"  # the baseline's rule: only the sampling differs
        assert main(["plan", str(path), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        steps = {arm: [r["step"] for r in rows if r["arm"] == arm] for arm in ("free", experiment.spec.baseline)}
        assert steps["free"] == steps[experiment.spec.baseline]  # the same steps, another self-generation
        shared = {r["step"]: r["action"] for r in rows if r["arm"] == "free"}
        assert shared["iter-00/train"] == "reuse" and shared["iter-01/generate"] == "run"


# --------------------------------------------------------------------------- statistics


def synthetic_outcomes() -> pd.DataFrame:
    """Two arms, two seeds, 40 questions, final stage iter-00 (the baseline) and iter-01 (the arm)."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in (1, 2):
        base = rng.random(40) < 0.4
        better = base | (rng.random(40) < 0.3)
        for arm, stage, correct, key in (("one", "iter-00", base, f"k1{seed}"), ("siked", "iter-01", better, f"k2{seed}")):
            for q, c in enumerate(correct):
                rows.append({"arm": arm, "seed": seed, "run_id": f"{arm}-{seed}", "benchmark": "arith-test",
                             "mode": "rationale", "stage": stage, "final": True, "step_key": key,
                             "question_id": f"q{q}", "correct": bool(c), "correct_strict": bool(c) and q % 2 == 0,
                             "strategy": "cot", "verdict": "correct" if c else "wrong", "rule": "final_answer"})
            # both arms' iter-00 share one evaluation in seed 1: no comparison there
    return pd.DataFrame(rows)


def test_comparisons_are_the_paired_tests_of_the_outcomes():
    outcomes = synthetic_outcomes()
    rows = comparison_rows(outcomes, baseline="one")
    assert {(r["stage"], r["seed"]) for r in rows} == {("final", 1), ("final", 2), ("final", None)}
    for r in rows:
        a = outcomes[(outcomes.arm == "siked") & ((outcomes.seed == r["seed"]) | (r["seed"] is None))]
        b = outcomes[(outcomes.arm == "one") & ((outcomes.seed == r["seed"]) | (r["seed"] is None))]
        merged = a.merge(b, on=["seed", "question_id"])
        only_a = int((merged.correct_x & ~merged.correct_y).sum())
        only_b = int((~merged.correct_x & merged.correct_y).sum())
        assert r["diff"] == pytest.approx(merged.correct_x.mean() - merged.correct_y.mean())
        if r["seed"] is not None:  # one seed: the exact McNemar test
            assert r["p_value"] == pytest.approx(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["p_value"] < 0.05)
        assert r["n"] == 40 and r["mde"] > 0
    pooled = next(r for r in rows if r["seed"] is None)
    per_seed = [r["diff"] for r in rows if r["seed"] is not None]
    assert pooled["diff_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    # pooled: the question is the unit, each question's difference summed over the two seeds
    wide = {arm: outcomes[outcomes.arm == arm].pivot(index="seed", columns="question_id", values="correct")
            for arm in ("siked", "one")}
    assert pooled["p_value"] == pytest.approx(sign_flip_p((wide["siked"].astype(int) - wide["one"].astype(int)).sum()))
    assert pooled["seeds"] == 2
    # the default family, the final stage: one comparison per seed (and pooled), so nothing to adjust
    assert all(r["p_holm"] == pytest.approx(r["p_value"]) and r["family"].startswith("final") for r in rows)


def _two_stage_outcomes() -> pd.DataFrame:
    """synthetic_outcomes plus the arm's own iter-00, compared with the baseline's there too."""
    outcomes = synthetic_outcomes()
    early = outcomes[outcomes.arm == "siked"].assign(stage="iter-00", final=False,
                                                     step_key=lambda f: f["step_key"] + "early")
    early = early.assign(correct=np.roll(early["correct"].to_numpy(), 3))
    return pd.concat([outcomes, early], ignore_index=True)


def test_holm_family_is_declared_final_stage_all_or_each_stage():
    outcomes = _two_stage_outcomes()
    second = outcomes[outcomes.arm == "siked"].assign(arm="other")
    both = pd.concat([outcomes, second])
    final = comparison_rows(both, baseline="one")
    seed1 = [r for r in final if r["seed"] == 1 and r["stage"] == "final"]
    assert len(seed1) == 2 and all(r["family_size"] == 2 and r["family"] == "final, seed 1" for r in seed1)
    assert all(r["p_holm"] == pytest.approx(min(1.0, 2 * r["p_value"])) for r in seed1)  # equal p-values
    early = [r for r in final if r["stage"] == "iter-00"]
    assert early and all(r["p_holm"] is None and r["family"] is None for r in early)  # outside: never significant
    every = comparison_rows(both, baseline="one", family="all")
    assert {r["family_size"] for r in every if r["seed"] == 1} == {4}
    per_stage = comparison_rows(both, baseline="one", family="stage")
    assert {r["family"] for r in per_stage if r["seed"] is None} == {"stage iter-00, pooled", "stage final, pooled"}
    with pytest.raises(ValueError, match="unknown Holm family 'first'"):
        comparison_rows(both, baseline="one", family="first")


def test_an_unknown_family_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_experiment(tmp_path, {"short": [], "long": []}, [], holm_family="first")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holm_family" in err and "'first'" in err


def test_a_shared_evaluation_is_not_compared():
    outcomes = synthetic_outcomes()
    twin = outcomes[outcomes.arm == "one"].assign(arm="twin")  # the same evaluation steps as the baseline
    rows = comparison_rows(pd.concat([outcomes, twin]), baseline="one")
    assert not [r for r in rows if r["arm"] == "twin"]


def test_accuracy_rows_give_wilson_per_seed_and_t_over_seeds():
    rows = accuracy_rows(synthetic_outcomes())
    one = [r for r in rows if r["arm"] == "one"]
    per_seed = [r for r in one if r["seed"] is not None]
    assert all(r["ci_low"] < r["accuracy"] < r["ci_high"] and r["n"] == 40 for r in per_seed)
    pooled = next(r for r in one if r["seed"] is None)
    assert pooled["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in per_seed]))
    assert pooled["seeds"] == 2 and pooled["sd"] is not None


# --------------------------------------------------------------------------- end to end


def _task_states_of_last_experiment() -> dict[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId as Parent
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> dict[str, list[str]]:
        async with get_client() as client:
            [top] = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["siked-experiment"])),
                                                sort=FlowRunSort.START_TIME_DESC, limit=1)
            ids, frontier = [top.id], [top.id]
            while frontier:  # the experiment's subflows (one per arm and seed) and theirs (iterations)
                children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=Parent(any_=frontier)))
                frontier = [c.id for c in children if c.id not in ids]
                ids += frontier
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        states: dict[str, list[str]] = {}
        for run in runs:
            states.setdefault(run.task_key.rsplit("-", 1)[0], []).append(run.state.name if run.state else "none")
        return states

    return asyncio.run(read())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_arms_differing_in_eval_train_once_and_evaluate_twice(tmp_path, tiny_model_path, capsys):
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path, **{"siked.iterations": "0"})
    clean = ["eval.decontamination.drop=true", "eval.decontamination.ngram=4"]  # 4-grams: the templates overlap
    path = write_experiment(tmp_path, {"short": [], "long": ["eval.max_tokens=12"], "clean": clean}, overrides)

    assert main(["plan", str(path), "--json"]) == 0
    plan = {(r["arm"], r["step"]): r for r in json.loads(capsys.readouterr().out)}
    assert plan[("long", "iter-00/train")]["action"] == "reuse"
    assert plan[("long", "iter-00/train")]["reuses_from"] == "short seed 1 of this experiment"
    assert plan[("long", "iter-00/evaluate")]["action"] == "run"

    assert main(["experiment", str(path)]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    states = _task_states_of_last_experiment()
    assert states["train_student_step"] == ["Completed"], states  # trained once, reused by two arms
    assert states["evaluate_model"].count("Completed") == 6, states  # base and iter-00, in each arm

    outcomes = read_artifact(str(folder / "outcomes.parquet"), "outcomes").to_pandas()
    assert {"arm", "seed", "benchmark", "mode", "stage", "question_id", "correct"} <= set(outcomes.columns)
    assert set(outcomes.arm) == {"short", "long", "clean"} and set(outcomes.stage) == {"base", "iter-00"}
    # `clean` left out the questions its contamination step found; the others kept every question
    clean_run = next(r["run_dir"] for r in json.loads((folder / "results.json").read_text())["runs"]
                     if r["arm"] == "clean")
    contamination = json.loads((Path(clean_run) / "contamination.json").read_text())["sets"]["arith-test"]
    assert contamination["overlapping"] > 0, contamination
    kept = outcomes[(outcomes.arm == "clean") & (outcomes["mode"] == "rationale") & (outcomes.stage == "base")]
    assert set(kept.question_id).isdisjoint(contamination["ids"])
    assert len(kept) == contamination["questions"] - contamination["overlapping"]
    assert "## Contamination" in (Path(clean_run) / "report/report.md").read_text()
    results = json.loads((folder / "results.json").read_text())
    assert results["comparisons"], results
    assert results["code_version"]  # the commit behind the figures (docs/results.md cites it)
    for entry in results["comparisons"]:
        assert {"arm", "baseline", "seed", "benchmark", "mode", "stage", "n", "diff", "ci_low", "ci_high",
                "p_value", "p_holm", "family", "mde"} <= set(entry)
    recomputed = json.loads(json.dumps(comparison_rows(outcomes, "short"), allow_nan=True).replace("NaN", "null"))
    assert recomputed == results["comparisons"]
    report = (folder / "report.md").read_text()
    assert "McNemar" in report and "Holm" in report and (folder / "accuracy.png").is_file()
    # What each run cost, from what its steps recorded: real tokens, the shared training in each arm.
    compute = {(c["arm"], c["seed"]): c for c in results["compute"]}
    for arm in ("short", "long", "clean"):
        run_cost = compute[(arm, 1)]
        assert run_cost["tokens_generated"] > 0 and run_cost["tokens_trained"] > 0 and run_cost["seconds"] > 0
        assert run_cost["unrecorded"] == [] and run_cost["by_kind"]["evaluate"]["tokens_generated"] > 0
        assert run_cost["tokens_trained_by_stage"] == {"base": 0, "iter-00": run_cost["tokens_trained"]}
    assert compute[("short", 1)]["by_kind"]["train"] == compute[("long", 1)]["by_kind"]["train"]  # one training
    assert (folder / "training_tokens.png").is_file() and "## Compute" in report
    assert "## Compute" in (Path(clean_run) / "report/report.md").read_text()

    # A second run of the file computes nothing and rewrites the same results.
    assert main(["experiment", str(path)]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == folder
    states = _task_states_of_last_experiment()
    assert "train_student_step" not in states and "evaluate_model" not in states, states  # all reused
    again = json.loads((folder / "results.json").read_text())
    assert again["comparisons"] == results["comparisons"]
    assert again["compute"] == results["compute"]  # reused steps keep the figures of the run that computed them
    # --collect runs nothing and writes the same results from the finished runs
    assert main(["experiment", str(path), "--collect"]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == folder
    assert json.loads((folder / "results.json").read_text())["comparisons"] == results["comparisons"]


def test_collect_before_any_run_lists_every_evaluation_as_missing(tmp_path, tiny_model_path, capsys):
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path, **{"siked.iterations": "0"})
    path = write_experiment(tmp_path, {"short": [], "long": ["eval.max_tokens=12"]}, overrides)
    assert main(["experiment", str(path), "--collect"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((folder / "results.json").read_text())
    assert results["comparisons"] == [] and len(results["missing"]) == 8  # 2 arms x 2 stages x 2 modes
    assert (folder / "report.md").is_file()


def test_report_draws_intervals_of_a_zero_accuracy(tmp_path):
    from flows.reports.experiment_report import write_experiment_report
    from storage.paths import ExperimentLayout

    outcomes = synthetic_outcomes().query("seed == 1 and question_id in ['q0', 'q1', 'q2']")
    outcomes = outcomes.assign(correct=False)  # one seed, 0 of 3: Wilson bars that start at 0
    document = {"experiment": "tiny", "file": "e.yaml", "baseline": "one", "seeds": [1], "arms": {"one": [],
                "siked": []}, "overrides": [], "runs": [], "missing": [],
                "method": {"difference_interval": "bootstrap", "test": "McNemar", "multiple_comparisons": "Holm"},
                "accuracy": accuracy_rows(outcomes), "comparisons": comparison_rows(outcomes, "one")}
    layout = ExperimentLayout(str(tmp_path), "tiny")
    markdown = write_experiment_report(layout, document)
    assert (tmp_path / "experiments/tiny/accuracy.png").is_file()
    assert "not significant" in markdown


def _document(outcomes: pd.DataFrame, seeds: list[int]) -> dict:
    return {"experiment": "tiny", "file": "e.yaml", "baseline": "one", "seeds": seeds,
            "arms": {"one": [], "siked": []}, "overrides": [], "runs": [], "missing": [],
            "method": {"difference_interval": "inverted test", "test": "sign flips", "multiple_comparisons": "Holm",
                       "detectable_effect": "80% power"},
            "accuracy": accuracy_rows(outcomes), "comparisons": comparison_rows(outcomes, "one")}


def test_report_words_follow_the_detectable_effect_and_name_one_seed_comparisons():
    from flows.reports.experiment_report import accuracy_table, render

    one_seed = synthetic_outcomes().query("seed == 1").copy()
    base = one_seed.loc[one_seed.arm == "one", "correct"].to_numpy()
    one_seed.loc[one_seed.arm == "siked", "correct"] = np.r_[~base[:3], base[3:]]  # 3 questions apart
    markdown = render(_document(one_seed, [1]), None)
    c = comparison_rows(one_seed, "one")[0]
    assert c["p_holm"] >= 0.05 and "not significant" in markdown
    assert f"had 80% power only for effects of {100 * c['mde']:.1f} points or more" in markdown
    assert "rules out effects below" in markdown
    assert "one trained model per arm, not between the procedures" in markdown
    several = render(_document(synthetic_outcomes(), [1, 2]), None)
    assert "one trained model per arm" not in several
    # strict accuracy beside the lenient one, for every arm
    table = accuracy_table(_document(synthetic_outcomes(), [1, 2]))
    assert "Strict %" in table and table.count("| one ") == table.count("| siked ") == 1


def test_plan_power_gives_each_comparisons_detectable_effect_and_says_what_it_assumed(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SIKED_HOME", str(tmp_path))
    assert main(["plan", str(REPO / "experiments/mixing.yaml"), "--power"]) == 0
    out = capsys.readouterr().out
    assert "assumed discordance: 25.0%" in out and "one seed" in out
    assert out.count("minimum detectable effect 8.1 points") == 5  # 300 questions, 5 arms against adaptive
    assert main(["plan", str(REPO / "experiments/mixing.yaml"), "--power", "--effect", "3"]) == 0
    assert "a 3-point effect needs 2,181 questions at 1 seed" in capsys.readouterr().out
    pilot = tmp_path / "results.json"
    pilot.write_text(json.dumps({"comparisons": comparison_rows(synthetic_outcomes(), "one")}))
    assert main(["plan", str(REPO / "experiments/siked_vs_single_pass.yaml"), "--power", "--pilot", str(pilot)]) == 0
    assert "measured in" in capsys.readouterr().out
    assert main(["plan", str(REPO / "configs/quickstart.yaml"), "--power"]) == 2


def test_oracle_counts_a_question_solved_by_any_forced_strategy():
    from flows.reports.experiment_results import oracle_rows

    base = synthetic_outcomes().query("seed == 1 and arm == 'one' and question_id in ['q0', 'q1', 'q2']")
    solved = {"forced_cot": [True, False, False], "forced_l2m": [False, False, False],
              "forced_pot": [False, True, False]}
    stage = pd.concat([base.assign(mode=mode, correct=flags, correct_strict=flags) for mode, flags in solved.items()])
    oracle = oracle_rows(stage)
    assert list(oracle["correct"]) == [True, True, False] and set(oracle["mode"]) == {"forced_any"}
    assert list(oracle.columns) == list(stage.columns)
    assert oracle_rows(stage[stage["mode"] != "forced_pot"]).empty  # needs every forced mode


def test_sampled_predictions_become_maj_and_pass_outcomes_per_question():
    from flows.reports.experiment_results import outcome_frame, sampled_predictions_as_outcomes

    said = {"q1": [7, 5, 5], "q2": [4, 4, 9]}
    gold = {"q1": 7.0, "q2": 4.0}
    samples = pd.DataFrame([{"sample_index": i, "question_id": q, "benchmark": "toy", "mode": "sampled",
                             "strategy": "cot", "gold": gold[q], "predicted": float(v),
                             "verdict": "correct" if v == gold[q] else "wrong", "rule": "final_answer"}
                            for q, values in said.items() for i, v in enumerate(values)])
    tables = sampled_predictions_as_outcomes(samples)
    frames = [outcome_frame("a", 1, "run", "iter-00", True, "k", t) for t in tables]
    got = {(f["mode"].iloc[0], q): c for f in frames for q, c in zip(f["question_id"], f["correct"])}
    assert got == {("sampled_maj", "q1"): False, ("sampled_maj", "q2"): True,
                   ("sampled_pass", "q1"): True, ("sampled_pass", "q2"): True}


def test_a_teacher_seed_per_seed_moves_the_teacher_steps_key_only_when_set(tmp_path):
    """Shared by default: two seeds share one teacher step. `teacher_seed: per_seed` resamples the
    teacher under each seed (its key moves with the seed), and leaves the problems' keys alone."""
    from flows.experiment_file import read_experiment
    from flows.run_setup import run_layout
    from tasks.pipeline import pipeline_steps

    def teacher_keys(**extra) -> list[str]:
        path = write_experiment(tmp_path, {"short": []}, [f"runs_root={tmp_path / 'runs'}"], seeds=(1, 2), **extra)
        runs = read_experiment(path).runs
        steps = [pipeline_steps(r.cfg, run_layout(r.cfg)) for r in runs]
        assert steps[0]["problems/train"].key == steps[1]["problems/train"].key
        return [s["iter-00/generate"].key for s in steps]

    shared = teacher_keys()
    assert shared[0] == shared[1]
    assert teacher_keys(teacher_seed="shared") == shared
    per_seed = teacher_keys(teacher_seed="per_seed")
    assert per_seed[0] != per_seed[1]


@pytest.mark.parametrize("path", ["experiments/siked_vs_single_pass.yaml", "experiments/gpu/siked_vs_single_pass.yaml"])
def test_the_off_policy_arm_plans_and_shares_the_first_round_with_siked(path, tmp_path, monkeypatch):
    """SIKeD's structure on the teacher's data alone: its first round is SIKeD's very steps."""
    from flows.experiment_file import read_experiment
    from flows.run_setup import run_layout
    from tasks.pipeline import pipeline_steps

    monkeypatch.delenv("SIKED_DATA_DIR", raising=False)  # the GPU file's GSM8K sets are skipped, not needed
    runs = {(r.arm, r.seed): r.cfg for r in read_experiment(REPO / path, [f"runs_root={tmp_path}",
                                                                          "eval.benchmarks=[]"]).runs}
    siked, off = (pipeline_steps(runs[(arm, 1)], run_layout(runs[(arm, 1)])) for arm in ("siked", "off_policy"))
    assert siked.keys() == off.keys()
    assert all(siked[n].key == off[n].key for n in siked if n.startswith(("problems/", "iter-00/")))
    assert off["iter-01/mix"].job["rule"] == "teacher" and siked["iter-01/mix"].key != off["iter-01/mix"].key


# --------------------------------------------------------------------------- compute


def record(step, role: str, **info) -> None:
    """A manifest at the step's output `role` holding only what its body recorded of its cost."""
    from storage.fs import write_json
    from storage.manifest import dir_manifest_url, manifest_url

    url = step.output(role)
    write_json(dir_manifest_url(url) if step.outputs[role].kind is None else manifest_url(url), {"info": info})


def test_results_give_each_runs_compute_with_shared_steps_in_every_run_and_the_mean_over_seeds(tmp_path):
    from flows.experiment import compute_rows
    from flows.run_setup import run_layout
    from tasks.pipeline import pipeline_steps

    path = write_experiment(tmp_path, {"one": ["siked.iterations=0"], "siked": ["siked.iterations=1"]},
                            [f"runs_root={tmp_path / 'runs'}"], seeds=(1, 2), baseline="one")
    experiment = read_experiment(path)
    for r in experiment.runs:
        steps = pipeline_steps(r.cfg, run_layout(r.cfg))
        record(steps["iter-00/generate"], "samples", tokens_generated=1000, seconds=10.0)  # shared by all four
        for step in steps.values():
            if step.kind == "train":
                record(step, "student", tokens_trained=100 * r.seed * (step.iteration + 1), seconds=5.0)
    rows = {(row["arm"], row["seed"]): row for row in compute_rows(experiment)}
    assert rows.keys() == {("one", 1), ("one", 2), ("one", None), ("siked", 1), ("siked", 2), ("siked", None)}
    assert rows[("one", 2)]["tokens_generated"] == rows[("siked", 1)]["tokens_generated"] == 1000
    assert rows[("one", 2)]["tokens_trained"] == 200 and rows[("siked", 2)]["tokens_trained"] == 200 + 400
    assert rows[("siked", 1)]["tokens_trained_by_stage"] == {"base": 0, "iter-00": 100, "iter-01": 300}
    assert rows[("siked", 1)]["by_kind"]["train"] == {"tokens_generated": 0, "tokens_scored": 0, "tokens_trained": 300,
                                                      "seconds": 10.0, "steps": 2}
    assert rows[("siked", 1)]["seconds"] == 20.0 and "iter-01/evaluate" in rows[("siked", 1)]["unrecorded"]
    mean = rows[("siked", None)]
    assert mean["seeds"] == 2 and mean["tokens_trained"] == (300 + 600) / 2
    assert mean["tokens_trained_by_stage"] == {"base": 0, "iter-00": 150, "iter-01": 450}
    assert mean["by_kind"]["generate"]["tokens_generated"] == 1000


def compute_row(arm: str, seed: int | None, by_stage: dict) -> dict:
    return {"arm": arm, "seed": seed, "tokens_generated": 5000, "tokens_scored": 0,
            "tokens_trained": max(by_stage.values()), "seconds": 42.0,
            "by_kind": {"generate": {"seconds": 30.0}, "train": {"seconds": 12.0}, "mix": {"seconds": 0.0}},
            "tokens_trained_by_stage": by_stage, "unrecorded": []}


def test_the_report_tabulates_compute_and_plots_accuracy_against_training_tokens(tmp_path):
    from flows.reports.experiment_report import TOKENS_PLOT, render, tokens_plot, write_experiment_report
    from storage.paths import ExperimentLayout

    document = _document(synthetic_outcomes(), [1, 2])
    compute = [compute_row("one", s, {"iter-00": 1000}) for s in (1, 2, None)]
    compute += [compute_row("siked", s, {"iter-00": 1000, "iter-01": 2500}) for s in (1, 2, None)]
    layout = ExperimentLayout(str(tmp_path), "tiny")
    markdown = write_experiment_report(layout, {**document, "compute": compute})
    assert "| siked | mean | 5,000 | 0 | 2,500 | 42.0 | generate 30.0, train 12.0 |" in markdown
    assert "| one | 1 | 5,000 | 0 | 1,000 | 42.0 |" in markdown
    assert f"![Accuracy against training tokens]({TOKENS_PLOT})" in markdown
    assert (tmp_path / "experiments/tiny" / TOKENS_PLOT).read_bytes().startswith(b"\x89PNG")
    # Unknown training tokens: nothing to plot. A results.json from before compute: no section.
    unknown = [{**row, "tokens_trained_by_stage": dict.fromkeys(row["tokens_trained_by_stage"])} for row in compute]
    assert tokens_plot({**document, "compute": unknown}) is None
    assert "## Compute" not in render(document, None)
    write_experiment_report(layout, document)
    assert not (tmp_path / "experiments/tiny" / TOKENS_PLOT).exists()  # the earlier plot no longer applies
