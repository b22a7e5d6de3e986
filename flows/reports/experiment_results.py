"""An experiment's numbers, computed from its per-question outcomes and nothing else.

    outcomes = outcome_frame(...)                 # one row per (arm, seed, benchmark, mode, stage, question)
    accuracy_rows(outcomes)                       # accuracy with Wilson intervals, per seed and over seeds
    comparison_rows(outcomes, baseline="one_pass")  # each arm against the baseline, paired

Comparisons pair an arm's and the baseline's outcomes on the same questions: per seed (the same seed
in both arms) and pooled over seeds (`seed` None). They are made at every stage both runs have, and at
`final` (each run's last stage, so SIKeD's iteration 3 meets one-pass distillation's iteration 0).
A stage where the arm and the baseline used the same evaluation step (one step key: the same model
evaluated the same way) is not compared; the difference would be zero by construction.

Holm's correction runs over a declared family (the experiment file's `holm_family`, FAMILIES):
by default every comparison at `final`, across arms, benchmarks and modes, once for the pooled
comparisons and once per seed. Comparisons outside the family keep their p-value, unadjusted, and
are never called significant.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from distill.evaluation import FORCED_MODES, STRICT_RULES, sampled_outcomes
from distill.significance import across_seeds, holm, paired_comparison, pooled_comparison, wilson_interval

KEYS = ["arm", "seed", "benchmark", "mode", "stage"]


def outcome_frame(arm: str, seed: int, run_id: str, stage: str, final: bool, step_key: str,
                  predictions: pd.DataFrame) -> pd.DataFrame:
    """OUTCOMES rows of one predictions table (PREDICTIONS columns) of one run's stage."""
    p = predictions
    return pd.DataFrame({
        "arm": arm, "seed": seed, "run_id": run_id, "benchmark": p["benchmark"], "mode": p["mode"],
        "stage": stage, "final": final, "step_key": step_key, "question_id": p["question_id"],
        "correct": p["verdict"] == "correct",
        # maj@k and pass@k count every sample's answer as the pipeline scores it: no strict variant
        "correct_strict": (p["verdict"] == "correct") & p["rule"].isin((*STRICT_RULES, *SAMPLED_OUTCOMES.values())),
        "strategy": p["strategy"], "verdict": p["verdict"], "rule": p["rule"],
    })


ORACLE_MODE = "forced_any"
SAMPLED_OUTCOMES = {"sampled_maj": "maj_at_k", "sampled_pass": "pass_at_k"}


def sampled_predictions_as_outcomes(samples: pd.DataFrame, rel_tol: float = 1e-6) -> list[pd.DataFrame]:
    """Per-question tables, shaped like PREDICTIONS, of the `sampled` mode's maj@k (mode
    `sampled_maj`) and pass@k (`sampled_pass`), from its k rows per question."""
    per_question = pd.DataFrame(sampled_outcomes(samples.to_dict("records"), rel_tol))
    if per_question.empty:
        return []
    benchmark = samples["benchmark"].iloc[0]
    return [pd.DataFrame({"benchmark": benchmark, "mode": mode, "question_id": per_question["question_id"],
                          "verdict": per_question[column].map({True: "correct", False: "wrong"}),
                          "rule": column, "strategy": None})
            for mode, column in SAMPLED_OUTCOMES.items()]


def oracle_rows(stage_outcomes: pd.DataFrame) -> pd.DataFrame:
    """The any-strategy oracle of one run's stage: per benchmark evaluated under every forced mode,
    a question counts as solved when some forced strategy solved it (mode `forced_any`)."""
    forced = stage_outcomes[stage_outcomes["mode"].isin(FORCED_MODES)]
    frames = []
    for _, g in forced.groupby("benchmark", sort=False):
        if set(g["mode"]) != set(FORCED_MODES):
            continue
        solved = g.groupby("question_id", sort=False).agg(correct=("correct", "any"),
                                                          correct_strict=("correct_strict", "any"))
        first = g.drop_duplicates("question_id").set_index("question_id")
        frame = first.drop(columns=["correct", "correct_strict"]).join(solved).reset_index()
        frames.append(frame.assign(mode=ORACLE_MODE, strategy=None, verdict=None, rule=None))
    return pd.concat(frames, ignore_index=True)[stage_outcomes.columns] if frames else stage_outcomes.iloc[0:0]


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def accuracy_rows(outcomes: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (arm, seed, benchmark, mode, stage): n, accuracy with its Wilson interval, and the strict
    accuracy; then per (arm, benchmark, mode, stage) over seeds (`seed` None): the mean, the standard
    deviation and the t interval of the seeds' accuracies."""
    rows = []
    for (arm, seed, benchmark, mode, stage), g in outcomes.groupby(KEYS, sort=False):
        n, k = len(g), int(g["correct"].sum())
        low, high = wilson_interval(k, n)
        rows.append({"arm": arm, "seed": int(seed), "benchmark": benchmark, "mode": mode, "stage": stage,
                     "final": bool(g["final"].iloc[0]), "n": n, "correct": k, "accuracy": k / n,
                     "ci_low": low, "ci_high": high, "accuracy_strict": float(g["correct_strict"].mean())})
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        return rows
    for (arm, benchmark, mode, stage), g in per_seed.groupby(["arm", "benchmark", "mode", "stage"], sort=False):
        spread = across_seeds(g["accuracy"].tolist())
        rows.append({"arm": arm, "seed": None, "benchmark": benchmark, "mode": mode, "stage": stage,
                     "final": bool(g["final"].all()), "n": int(g["n"].sum()), "correct": int(g["correct"].sum()),
                     "accuracy": spread["mean"], "sd": _finite(spread["sd"]),
                     "ci_low": _finite(spread["ci_low"]), "ci_high": _finite(spread["ci_high"]),
                     "seeds": spread["seeds"], "accuracy_strict": float(g["accuracy_strict"].mean())})
    return rows


def _stage_rows(outcomes: pd.DataFrame, arm: str, stage: str) -> pd.DataFrame:
    rows = outcomes[outcomes["arm"] == arm]
    return rows[rows["final"]] if stage == "final" else rows[rows["stage"] == stage]


def _final_stages(outcomes: pd.DataFrame, arm: str) -> set[str]:
    return set(outcomes.loc[(outcomes["arm"] == arm) & outcomes["final"], "stage"])


def _stages(outcomes: pd.DataFrame, arm: str, baseline: str) -> list[str]:
    """The stages both runs have, then `final`; a stage that is both runs' last is compared as
    `final` only."""
    mine = set(outcomes.loc[outcomes["arm"] == arm, "stage"])
    theirs = list(dict.fromkeys(outcomes.loc[outcomes["arm"] == baseline, "stage"]))
    arm_final = _final_stages(outcomes, arm)
    same_final = arm_final if arm_final == _final_stages(outcomes, baseline) else set()
    return [s for s in theirs if s in mine and s not in same_final] + ["final"]


def _aligned(arm_rows: pd.DataFrame, base_rows: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, question): the arm's and the baseline's outcome, on the questions both answered."""
    cols = ["seed", "question_id", "correct", "step_key"]
    return arm_rows[cols].merge(base_rows[cols], on=["seed", "question_id"], suffixes=("_arm", "_base"))


def _entry(arm: str, baseline: str, seed: int | None, benchmark: str, mode: str, stage: str,
           result: dict[str, Any]) -> dict[str, Any]:
    return {"arm": arm, "baseline": baseline, "seed": seed, "benchmark": benchmark, "mode": mode,
            "stage": stage, **result}


def comparison_rows(outcomes: pd.DataFrame, baseline: str, family: str = "final") -> list[dict[str, Any]]:
    """Every arm against `baseline` (results.json's `comparisons`), Holm-adjusted over `family`."""
    out: list[dict[str, Any]] = []
    arms = [a for a in dict.fromkeys(outcomes["arm"]) if a != baseline]
    for arm in arms:
        for stage in _stages(outcomes, arm, baseline):
            mine, theirs = _stage_rows(outcomes, arm, stage), _stage_rows(outcomes, baseline, stage)
            for (benchmark, mode), a_rows in mine.groupby(["benchmark", "mode"], sort=False):
                b_rows = theirs[(theirs["benchmark"] == benchmark) & (theirs["mode"] == mode)]
                pairs = _aligned(a_rows, b_rows)
                if pairs.empty or (pairs["step_key_arm"] == pairs["step_key_base"]).all():
                    continue  # no common questions, or one evaluation shared by both arms
                seeds = list(dict.fromkeys(pairs["seed"]))
                for seed in seeds:
                    s = pairs[pairs["seed"] == seed]
                    c = paired_comparison(s["correct_arm"].to_numpy(), s["correct_base"].to_numpy())
                    out.append(_entry(arm, baseline, int(seed), benchmark, mode, stage, c.as_dict()))
                if len(seeds) > 1:
                    out.append(_entry(arm, baseline, None, benchmark, mode, stage, _pooled(pairs, seeds)))
    _adjust(out, family)
    return out


def _pooled(pairs: pd.DataFrame, seeds: list) -> dict[str, Any]:
    """Over seeds, on the questions every seed answered: the pooled comparison and the spread of the
    per-seed differences."""
    wide_arm = pairs.pivot(index="seed", columns="question_id", values="correct_arm").dropna(axis=1)
    wide_base = pairs.pivot(index="seed", columns="question_id", values="correct_base")[wide_arm.columns]
    c = pooled_comparison(wide_arm.to_numpy(dtype=int), wide_base.to_numpy(dtype=int)).as_dict()
    per_seed = (wide_arm.to_numpy(dtype=int) - wide_base.to_numpy(dtype=int)).mean(axis=1)
    spread = across_seeds(per_seed.tolist())
    return {**c, "diff_sd": _finite(spread["sd"]), "diff_seed_ci_low": _finite(spread["ci_low"]),
            "diff_seed_ci_high": _finite(spread["ci_high"])}


# Which comparisons one Holm correction covers; each family is split by seed (pooled apart).
FAMILIES = {
    "final": "every comparison at the final stage, across arms, benchmarks and modes",
    "stage": "the comparisons of each stage, across arms, benchmarks and modes",
    "all": "every comparison at every stage, across arms, benchmarks and modes",
}


def _family_of(row: dict[str, Any], family: str) -> str | None:
    """The family's label for one comparison, or None when the declared family leaves it out."""
    if family == "final" and row["stage"] != "final":
        return None
    scope = f"stage {row['stage']}" if family == "stage" else family
    return f"{scope}, {'pooled' if row['seed'] is None else 'seed ' + str(row['seed'])}"


def _adjust(rows: list[dict[str, Any]], family: str) -> None:
    """Holm over each family; rows outside every family get `p_holm` None and `family` None."""
    if family not in FAMILIES:
        raise ValueError(f"unknown Holm family {family!r} (known: {', '.join(FAMILIES)})")
    families: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        label = _family_of(r, family)
        r["family"], r["p_holm"], r["family_size"] = label, None, None
        if label is not None:
            families.setdefault(label, []).append(i)
    for label, members in families.items():
        adjusted = holm([rows[i]["p_value"] for i in members])
        for i, p in zip(members, adjusted, strict=True):
            rows[i]["p_holm"] = p
            rows[i]["family_size"] = len(members)
