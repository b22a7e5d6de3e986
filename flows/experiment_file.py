"""Experiment files: arms and seeds of one comparison, each a run config.

    name: mixing
    base: configs/quickstart.yaml          # relative to the repository root, or absolute
    overrides: [siked.iterations=2]        # applied to every arm
    seeds: [1, 2, 3]                       # each sets the run's `seed`
    baseline: adaptive
    holm_family: final                     # which comparisons one Holm correction covers (optional)
    arms:
      adaptive: [siked.mixing=adaptive]
      all: [siked.mixing=all]

`read_experiment(path)` validates the file and every (arm, seed) config before anything runs, and
names the file and the arm in any error. An arm's run is the base config, then `overrides`, then the
arm's own list, then `seed=<seed>`; its name is `<experiment>-<arm>-s<seed>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.config import ConfigError, RunConfig, section_hash
from distill.strict_yaml import load_yaml, yaml_problem
from flows.commands.config_files import read_config

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME_RULE = "letters, digits, '_' and '-'"


def _plain_name(value: str, what: str) -> str:
    if not value or not all(c.isalnum() or c in "_-" for c in value):
        raise ValueError(f"{what} {value!r} must use only {NAME_RULE}")
    return value


class ExperimentSpec(BaseModel):
    """The YAML of an experiment file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base: str
    """The arms' common config: a path relative to the repository root, or absolute."""
    overrides: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    baseline: str
    arms: dict[str, list[str]] = Field(min_length=1)
    teacher_seed: Literal["shared", "per_seed"] = "shared"
    """`shared`: every seed trains on one set of teacher samples (the teacher's `teacher.engine.seed`
    stays the base config's), as the papers compare; the comparison then leaves the teacher's
    sampling variance out. `per_seed`: the teacher samples again under each seed
    (`teacher.engine.seed` = the seed), so that variance enters the comparison, at one teacher
    generation per seed."""
    holm_family: str = "final"
    """Which comparisons one Holm correction covers: `final` (every comparison at the final stage,
    across arms, benchmarks and modes), `stage` (each stage apart) or `all` (every stage together);
    flows.reports.experiment_results.FAMILIES. Pooled and per-seed comparisons are adjusted apart."""

    @field_validator("holm_family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        from flows.reports.experiment_results import FAMILIES

        if value not in FAMILIES:
            raise ValueError(f"unknown family {value!r} (known: {', '.join(FAMILIES)})")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _plain_name(value, "experiment name")

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for arm in value:
            _plain_name(arm, "arm name")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value

    @model_validator(mode="after")
    def _baseline_is_an_arm(self) -> ExperimentSpec:
        if self.baseline not in self.arms:
            raise ValueError(f"baseline {self.baseline!r} is not an arm (arms: {', '.join(self.arms)})")
        return self


@dataclass(frozen=True)
class ArmRun:
    arm: str
    seed: int
    cfg: RunConfig


@dataclass(frozen=True)
class Experiment:
    spec: ExperimentSpec
    source: str  # the experiment file
    runs: tuple[ArmRun, ...]  # arm-major, seeds in file order

    @property
    def folder_name(self) -> str:
        """`<name>-<hash of the spec>`: the same file always maps to the same experiment folder."""
        return f"{self.spec.name}-{section_hash(self.spec.model_dump(mode='json'), length=10)}"


def is_experiment_file(path: str | Path) -> bool:
    """Whether a YAML file is an experiment (it has `arms`) rather than a run config."""
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "arms" in data


def base_path(base: str, experiment_file: Path) -> Path:
    """`base` as given: absolute, else against the repository root, else beside the experiment file."""
    path = Path(base).expanduser()
    if path.is_absolute():
        return path
    for root in (REPO_ROOT, experiment_file.resolve().parent):
        if (root / path).is_file():
            return root / path
    raise ConfigError(f"{experiment_file}: base {base!r} found neither under the repository root "
                      f"({REPO_ROOT}) nor beside the experiment file")


def arm_config(spec: ExperimentSpec, base: Path, arm: str, seed: int, source: str) -> RunConfig:
    overrides = [*spec.overrides, *spec.arms[arm], f"seed={seed}", f"name={spec.name}-{arm}-s{seed}"]
    if spec.teacher_seed == "per_seed":
        overrides.append(f"teacher.engine.seed={seed}")
    try:
        return read_config(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{source}: arm {arm!r} (seed {seed}): {exc}") from None


def read_experiment(path: str | Path, extra_overrides: list[str] | None = None) -> Experiment:
    """Parse and validate an experiment file; `extra_overrides` apply to every arm after the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an experiment file is a mapping with name, base, seeds, baseline and arms")
    if extra_overrides:
        data = {**data, "overrides": [*(data.get("overrides") or []), *extra_overrides]}
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid experiment: {problems}") from None
    base = base_path(spec.base, path)
    runs = tuple(ArmRun(arm, seed, arm_config(spec, base, arm, seed, str(path)))
                 for arm in spec.arms for seed in spec.seeds)
    return Experiment(spec, str(path), runs)
