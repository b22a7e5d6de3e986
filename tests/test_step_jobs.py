"""A step's key is exactly what its job holds, for every field of the config.

The fields are enumerated from the config models, not listed by hand: for each leaf field, one
changed value; the steps whose key changes must be exactly the steps whose keyed job (or an
input's key) changes, an execution-only field must change no key, and a field that reaches no
step's job is a field the pipeline ignores, which fails here until it is given to the step that
reads it (or declared where the run is stored)."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from distill.config import EXECUTION_ONLY, RunConfig, Section, load_config
from flows.run_setup import run_layout
from tasks.pipeline import Step, as_json, pipeline_steps

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = (REPO / "configs/quickstart.yaml").read_text()
# Where a run is stored and read from, and what it is called: no step's outputs depend on them (file
# benchmarks hash their file's content into their key instead; the report shows the run's name).
LOCATION = {"runs_root", "data_dir", "name"}
FILE_TRAIN_DATA = ('train_data={name: file, path: problems.jsonl, question: q, answer: a, id: i, alias: mine, '
                   'rationale: r, choices: [c1, c2]}')
# Configs between them reaching every field: the quickstart, one with the optional branches on, DSS's
# one-pass format, training problems from a file (multiple choice, so in DSS's format), rationales
# given by a file rather than generated, the student's samples scored (token_level), and trained on.
VARIANTS = [[], ["siked.mixing=alpha", "eval.modes=[rationale, label, sampled]", "eval.decontamination.drop=true",
                 "teacher.engine.deterministic=true", "siked.engine.deterministic=true"],
            ["train.format=dss", "train.select_on=label", "siked.iterations=0"],
            [FILE_TRAIN_DATA, "train.format=dss", "train.select_on=label", "siked.iterations=0"],
            ["train_data={name: file, source: hub, repo: me/problems, config: main, question: q, answer: a}"],
            ["teacher.engine.kind=file", "teacher.engine.files=[rationales.jsonl]"],
            ["token_level.use=record", "token_level.teacher=self"],
            ["token_level.use=siked", "token_level.teacher=self", "token_level.divergence=jsd"]]


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, field info) of every leaf field; lists of sections (eval.benchmarks) are leaves."""
    leaves = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            leaves += leaf_fields(annotation, f"{prefix}{name}.")
        else:
            leaves.append((f"{prefix}{name}", info))
    return leaves


FIELDS = leaf_fields(RunConfig)


def candidates(value: Any, annotation: Any) -> list[Any]:
    """Other values a field could take, the likeliest valid first."""
    return [c for c in _candidates(value, annotation) if c != value]


def _candidates(value: Any, annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [c for a in args if a is not type(None) for c in _candidates(value, a)]
        return found + ([None] if value is not None and type(None) in args else [])
    if typing.get_origin(annotation) is Literal:
        return [a for a in args if a != value]
    if annotation is bool:
        return [not value]
    if annotation is int:
        base = value if isinstance(value, int) else 1
        return [base + 1, base - 1, 2, 1]
    if annotation is float:
        base = value if isinstance(value, float | int) else 0.5
        return [base * 0.5, base + 0.1, 0.05, 0.5, 0.3]
    if annotation is str:
        return [f"{value}x" if value else "x", "x"]
    if typing.get_origin(annotation) is list:
        (inner,) = args
        value = value or []
        if typing.get_origin(inner) is Literal:
            return [list(value)[:1] or [typing.get_args(inner)[0]], list(typing.get_args(inner))[:2]]
        if inner is float:
            return [[0.3], [*value, 0.1]]
        if inner is str:
            return [[*value, "x"], ["x"]]
        return [[*value, {"name": "arith", "split": "test", "size": 7, "label": "extra"}],
                [*value, {"name": "arith", "split": "dev", "size": 7}], value[:1]]
    if typing.get_origin(annotation) is dict:
        return [{**(value or {}), "x_extra": 1}]
    return []


def with_change(cfg: RunConfig, dotted: str, annotation: Any) -> RunConfig | None:
    data = cfg.model_dump(mode="json")
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    for value in candidates(node.get(leaf), annotation):
        node[leaf] = value
        try:
            return RunConfig.model_validate(json.loads(json.dumps(data)))
        except Exception:  # noqa: BLE001, S112 -- the next candidate may be valid
            continue
    return None


def full_job(step: Step) -> Any:
    return as_json(step.job, keyed=False)


def compare(before: dict[str, Step], after: dict[str, Step]) -> tuple[set[str], set[str], set[str]]:
    """(steps whose key changed, whose keyed job or inputs changed, whose job changed at all)."""
    names = set(before) | set(after)
    moved, keyed, touched = set(), set(), set()
    for name in names:
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            moved.add(name)
            keyed.add(name)
            touched.add(name)
            continue
        inputs_moved = {r: before[n].key for r, n in a.inputs.items()} != {r: after[n].key for r, n in b.inputs.items()}
        if a.key != b.key:
            moved.add(name)
        if a.reads != b.reads or inputs_moved or a.outputs != b.outputs:
            keyed.add(name)
        if full_job(a) != full_job(b) or inputs_moved or a.outputs != b.outputs:
            touched.add(name)
    return moved, keyed, touched


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_every_field_moves_exactly_the_keys_of_the_steps_whose_job_it_changes(tmp_path, variant):
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", *VARIANTS[variant]])
    layout = run_layout(cfg)
    before = pipeline_steps(cfg, layout)
    for dotted, info in FIELDS:
        if dotted in LOCATION:
            continue
        changed = with_change(cfg, dotted, info.annotation)
        if changed is None:
            continue
        moved, keyed, _ = compare(before, pipeline_steps(changed, layout))
        assert moved == keyed, f"{dotted}: keys moved {sorted(moved)}, keyed jobs changed {sorted(keyed)}"
        if info.json_schema_extra == EXECUTION_ONLY and not (dotted.endswith("gpu_memory_utilization")
                                                            and "deterministic=true" in " ".join(VARIANTS[variant])):
            assert not moved, f"{dotted} is execution-only but moved {sorted(moved)}"


def test_every_field_reaches_a_steps_job_in_some_config(tmp_path):
    reached, changeable = set(), set()  # a field no valid config can change (train_data.label) is refused
    for variant in VARIANTS:
        cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", *variant])
        layout = run_layout(cfg)
        before = pipeline_steps(cfg, layout)
        for dotted, info in FIELDS:
            changed = with_change(cfg, dotted, info.annotation)
            if changed is not None:
                changeable.add(dotted)
                if compare(before, pipeline_steps(changed, layout))[2]:
                    reached.add(dotted)
    ignored = sorted(changeable - reached - LOCATION)
    assert not ignored, f"fields no step is given (give each to the step whose body reads it): {ignored}"


def test_every_config_field_is_described():
    undocumented = [dotted for dotted, info in FIELDS if not info.description]
    assert not undocumented, f"config fields without a description (a docstring under the field): {undocumented}"


def test_a_step_list_with_an_input_that_is_no_earlier_step_is_refused():
    from tasks.pipeline import Output, _Builder

    b = _Builder("/runs")
    with pytest.raises(ValueError, match="step b: its input a is no earlier step"):
        b.add("b", "verify", 0, {}, {"samples": "a"}, {"v": Output("v.parquet", "verified")})
