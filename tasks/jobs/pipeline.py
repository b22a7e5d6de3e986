"""Every step of a run, described once: the config fields it reads, its inputs, its outputs, its key.

    steps = pipeline_steps(cfg, layout)          # {name: Step} in pipeline order
    steps["iter-01/train"].output("student")     # where that output lives (the step store)
    plan = decide(steps, layout)                 # {name: Decision}: reuse (whose output) or run

A step's key hashes its kind, the values of exactly the config fields it reads, its iteration, the
keys of the steps whose outputs it reads and the code's cache version. A changed field therefore
changes the keys of the steps that read it and of everything downstream, and nothing else: another
learning rate keeps the teacher's keys, another evaluation budget keeps every training key. Outputs
live in the step store under the runs root (storage.step_store), so runs that agree on a step share
its output. The flow, `siked status` and `siked plan` all read this list; no other code builds keys.

Completion is read from the files: every output's manifest written under the step's key, and the
parents it was made from still the inputs' current contents (a recomputed input invalidates it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from distill.config import FILE_BENCHMARK_KEYS, BenchmarkRef, RunConfig
from distill.mixing import alpha_for_iteration
from distill.student_format import LABEL_PARSER_VERSION
from storage import fs
from storage.artifacts import incomplete_reason, read_manifest
from storage.paths import RunLayout, join
from storage.step_store import read_step_info, step_dir
from tasks.jobs.benchmarks import content_key, data_available

KINDS = ("problems", "contamination", "generate", "verify", "distill_set", "mix", "train", "evaluate", "report")
# Bump when a change to the code must invalidate finished steps (the package version is part of the
# key too). Git commits alone do not: resuming after an unrelated fix must reuse finished work.
CACHE_VERSION = "2"
# Per step kind: bump one when a change to that step's code changes what it writes; that step and
# everything downstream of it then run again, nothing upstream.
STEP_CODE_VERSIONS = {kind: "1" for kind in KINDS}
STEP_CODE_VERSIONS["mix"] = "2"  # `adaptive` became the reference code's per-(question, strategy) rule
STEP_CODE_VERSIONS["verify"] = "2"  # answer parser 2 (distill.verify.PARSER_VERSION)
STEP_CODE_VERSIONS["evaluate"] = "2"  # answer parser 2; forced, sampled and strict scores
# Settings that change how a step runs, not what it writes: left out of its key, so raising a
# timeout or a KV-cache share never recomputes finished work.
EXECUTION_ONLY = {
    "engine": ("gpu_memory_utilization", "concurrency", "max_retries", "request_timeout_s", "api_key_env",
               "ray_address", "in_process"),
    "train": ("tensorboard", "checkpoint_every"),
}
VERIFY_FIELDS = ("verify.timeout_s", "verify.cpu_seconds", "verify.memory_mb", "verify.max_output_kb",
                 "verify.rel_tol")
EVAL_FIELDS = ("siked.engine", "eval.modes", "eval.max_tokens", "eval.label_max_tokens", *VERIFY_FIELDS)
REPORT_FILE = "report/report.md"
REPORT_KEY_FILE = "report/report.key"


def cache_version() -> str:
    try:
        package = metadata.version("siked-pipeline")
    except metadata.PackageNotFoundError:
        package = "0"
    return f"{package}/{CACHE_VERSION}"


@dataclass(frozen=True)
class Output:
    path: str  # inside the step's folder
    kind: str | None  # artifact kind (storage.schemas); None for a marked folder (a student)


@dataclass(frozen=True)
class Step:
    """One job of the pipeline. `inputs` maps a role to the name of the step whose output it reads."""

    name: str  # e.g. "iter-01/train"
    kind: str
    iteration: int | None
    reads: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, Output]
    key: str
    folder: str  # the step store folder (the run folder for the report)

    def output(self, role: str) -> str:
        return join(self.folder, self.outputs[role].path)

    def index_entry(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "iteration": self.iteration, "key": self.key,
                "dir": self.folder, "inputs": self.inputs,
                "outputs": {role: self.output(role) for role in self.outputs}}


def _value(cfg: RunConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    if not isinstance(node, BaseModel):
        return node
    section = dotted.rpartition(".")[2]
    exclude = set(EXECUTION_ONLY.get(section, ()))
    if section == "engine" and getattr(node, "deterministic", False):
        # Whether a shard's sequences fit the KV cache together decides whether its samples repeat
        # (vLLM preempts otherwise): with `deterministic`, the cache share changes what is written.
        exclude.discard("gpu_memory_utilization")
    return node.model_dump(mode="json", exclude=exclude)


def fields(cfg: RunConfig, *dotted: str) -> dict[str, Any]:
    """{dotted name: JSON value} of the config fields a step reads."""
    return {name: _value(cfg, name) for name in dotted}


def step_key(kind: str, reads: dict[str, Any], input_keys: dict[str, str], iteration: int | None) -> str:
    payload = {"kind": kind, "reads": reads, "inputs": input_keys, "iteration": iteration,
               "code": cache_version(), "step_code": STEP_CODE_VERSIONS[kind]}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@dataclass
class _Builder:
    runs_root: str
    steps: dict[str, Step] = field(default_factory=dict)

    def add(self, name: str, kind: str, iteration: int | None, reads: dict[str, Any], inputs: dict[str, str],
            outputs: dict[str, Output], folder: str | None = None) -> Step:
        key = step_key(kind, reads, {role: self.steps[n].key for role, n in inputs.items()}, iteration)
        step = Step(name, kind, iteration, reads, inputs, outputs, key, folder or step_dir(self.runs_root, kind, key))
        self.steps[name] = step
        return step


# --------------------------------------------------------------------------- the list of steps


def eval_set_label(ref: BenchmarkRef) -> str:
    return ref.eval_label


def skipped_eval_sets(cfg: RunConfig) -> list[BenchmarkRef]:
    """Evaluation sets left out because their data folder is missing and `skip_if_missing` is set."""
    return [ref for ref in cfg.eval.benchmarks if ref.skip_if_missing and not data_available(ref, cfg.data_dir)]


def _benchmark(ref: BenchmarkRef) -> dict[str, Any]:
    """What a problems step reads of a benchmark reference: not its place in a list, nor whether a
    missing data folder would skip it, so the same set frozen anywhere is one step. A file
    benchmark's key holds its file's content hash; the keys only file benchmarks use are left out
    of the others' (which then kept their keys when those keys were added)."""
    unused = {key for key in FILE_BENCHMARK_KEYS if getattr(ref, key) is None}
    return {"benchmark": ref.model_dump(mode="json", exclude={"skip_if_missing"} | unused), **content_key(ref)}


def _problems(b: _Builder, cfg: RunConfig) -> list[str]:
    b.add("problems/train", "problems", None, _benchmark(cfg.train_data), {},
          {"problems": Output("problems.parquet", "problems")})
    names = []
    skipped = skipped_eval_sets(cfg)
    for ref in cfg.eval.benchmarks:
        if ref in skipped:
            continue
        name = f"problems/eval-{eval_set_label(ref)}"
        b.add(name, "problems", None, _benchmark(ref), {}, {"problems": Output("problems.parquet", "problems")})
        names.append(name)
    return names


def _evaluate(b: _Builder, cfg: RunConfig, stage: str, eval_sets: list[str], model_step: str | None,
              model_spec: str | None = None) -> None:
    """`<stage>/evaluate`: the model (a train step's student, or `model_spec`) on every set and mode."""
    if not eval_sets:
        return
    reads = fields(cfg, *EVAL_FIELDS)
    # Greedy decoding draws nothing: the engine's seed does not change what an evaluation writes,
    # so the seeds of an experiment share the untrained student's evaluation.
    sampled = "sampled" in cfg.eval.modes  # self-consistency draws: its seed and settings count
    reads["siked.engine"] = {k: v for k, v in reads["siked.engine"].items() if k != "seed" or sampled}
    if sampled:
        reads.update(fields(cfg, "eval.self_consistency"))
    if "label" in cfg.eval.modes:  # how bare answers are read: only label-mode predictions depend on it
        reads["label_parser"] = LABEL_PARSER_VERSION
    if model_spec is not None:
        reads["model"] = model_spec
    inputs = {f"problems:{name.removeprefix('problems/eval-')}": name for name in eval_sets}
    if model_step:
        inputs["model"] = model_step
    if cfg.eval.decontamination.drop and CONTAMINATION in b.steps:
        inputs["contamination"] = CONTAMINATION  # the overlapping questions it leaves out
        reads["eval.decontamination.drop"] = True
    outputs = {f"{label}/{mode}": Output(f"{label}-{mode}.parquet", prediction_kind(mode))
               for label in (name.removeprefix("problems/eval-") for name in eval_sets) for mode in cfg.eval.modes}
    b.add(f"{stage}/evaluate", "evaluate", None if stage == "base" else _iteration_of(stage), reads, inputs, outputs)


CONTAMINATION = "problems/contamination"


def _contamination(b: _Builder, cfg: RunConfig, eval_sets: list[str]) -> None:
    """Overlap of every evaluation set with the training problems (and the prompt exemplars)."""
    if not eval_sets:
        return
    reads = {"eval.decontamination": {k: v for k, v in _value(cfg, "eval.decontamination").items() if k != "drop"}}
    inputs = {"train": "problems/train", **{f"problems:{n.removeprefix('problems/eval-')}": n for n in eval_sets}}
    b.add(CONTAMINATION, "contamination", None, reads, inputs, {"overlaps": Output("overlaps.parquet", "overlaps")})


def prediction_kind(mode: str) -> str:
    """The artifact kind an evaluation mode writes: one row per question, or per sample (`sampled`)."""
    return "sampled_predictions" if mode == "sampled" else "predictions"


def _iteration_of(stage: str) -> int | None:
    return int(stage.split("-")[1]) if stage.startswith("iter-") else None


def _train(b: _Builder, cfg: RunConfig, iteration: int, train_set: str) -> str:
    stage = f"iter-{iteration:02d}"
    inputs = {"train_set": train_set}
    if iteration > 0 and cfg.train.continue_from_previous:
        inputs["start"] = f"iter-{iteration - 1:02d}/train"
    if cfg.train.format == "dss":
        inputs["problems"] = "problems/train"  # the labels as the dataset writes them (answer_text)
    b.add(f"{stage}/train", "train", iteration, fields(cfg, "train"), inputs,
          {"student": Output("student", None), "metrics": Output("train_metrics.parquet", "train_metrics")})
    return f"{stage}/train"


def _verify_and_select(b: _Builder, cfg: RunConfig, iteration: int, biased: str | None) -> None:
    stage = f"iter-{iteration:02d}"
    b.add(f"{stage}/verify", "verify", iteration, fields(cfg, *VERIFY_FIELDS),
          {"samples": f"{stage}/generate", "problems": "problems/train"},
          {"verified": Output("verified.parquet", "verified")})
    # A biased chain biases every round's set (SIKeD's CoT-, L2M- and PoT-biased runs); an unbiased
    # run keeps the keys it always had.
    reads = {"teacher.biased": biased} if iteration == 0 or biased is not None else {}
    b.add(f"{stage}/distill_set", "distill_set", iteration, reads,
          {"verified": f"{stage}/verify", "problems": "problems/train"},
          {"distill_set": Output("distill_set.parquet", "train_examples")})


def pipeline_steps(cfg: RunConfig, layout: RunLayout) -> dict[str, Step]:
    """Every step `cfg` asks for, in the order the flow runs them, the report last."""
    b = _Builder(layout.root)
    eval_sets = _problems(b, cfg)
    _contamination(b, cfg, eval_sets)
    if cfg.eval.evaluate_base:
        _evaluate(b, cfg, "base", eval_sets, None, model_spec=cfg.train.model)
    teacher = "teacher"
    b.add("iter-00/generate", "generate", 0,
          fields(cfg, f"{teacher}.engine", f"{teacher}.sampling", f"{teacher}.strategies", f"{teacher}.shard_size",
                 f"{teacher}.shots"),
          {"problems": "problems/train"}, {"samples": Output("samples", "samples")})
    _verify_and_select(b, cfg, 0, cfg.teacher.biased)
    student = _train(b, cfg, 0, "iter-00/distill_set")
    _evaluate(b, cfg, "iter-00", eval_sets, student)
    for iteration in range(1, cfg.siked.iterations + 1):
        stage = f"iter-{iteration:02d}"
        b.add(f"{stage}/generate", "generate", iteration,
              fields(cfg, "siked.engine", "siked.sampling", "teacher.shard_size"),
              {"problems": "problems/train", "student": student}, {"samples": Output("samples", "samples")})
        _verify_and_select(b, cfg, iteration, cfg.teacher.biased)
        target = alpha_for_iteration(cfg.siked.alpha_schedule, iteration) if cfg.siked.mixing == "alpha" else None
        b.add(f"{stage}/mix", "mix", iteration,
              {**fields(cfg, "siked.mixing", "seed"), "target_alpha": target},
              {"self_set": f"{stage}/distill_set", "verified": f"{stage}/verify", "teacher_set": "iter-00/distill_set"},
              {"train_set": Output("train_set.parquet", "train_examples")})
        student = _train(b, cfg, iteration, f"{stage}/mix")
        _evaluate(b, cfg, stage, eval_sets, student)
    # The report is the run's own (it shows the run's config): it lives in the run folder.
    reported = {name: name for name, s in b.steps.items() if s.kind in ("evaluate", "train", "mix", "distill_set")}
    b.add("report", "report", None, {"run": layout.run_id}, reported, {"report": Output(REPORT_FILE, None)},
          folder=layout.run_dir)
    return b.steps


def eval_only_steps(cfg: RunConfig, layout: RunLayout, model: str, model_hash: str | None) -> dict[str, Step]:
    """`siked eval MODEL`: the evaluation sets and one `eval/evaluate` of `model`. A local folder's
    content hash (from its manifest, when it has one) is part of the key: a retrained folder at the
    same path is evaluated again."""
    b = _Builder(layout.root)
    eval_sets = _problems(b, cfg)
    del b.steps["problems/train"]
    spec = f"{model}#{model_hash}" if model_hash else model
    _evaluate(b, cfg, "eval", eval_sets, None, model_spec=spec)
    return b.steps


def eval_targets(step: Step, steps: dict[str, Step]) -> tuple[tuple[str, str, str, str], ...]:
    """(benchmark label, problems URL, mode, predictions URL) of every output of an evaluate step."""
    targets = []
    for role in step.outputs:
        label, _, mode = role.rpartition("/")
        problems = steps[step.inputs[f"problems:{label}"]].output("problems")
        targets.append((label, problems, mode, step.output(role)))
    return tuple(targets)


# --------------------------------------------------------------------------- reuse or run


@dataclass
class Decision:
    action: str  # reuse | run
    reason: str = ""  # why it runs
    producer: str | None = None  # the run whose output is reused


def _parents_current(url: str) -> str | None:
    """Why the output at `url` was made from inputs other than the current ones, or None."""
    for parent in read_manifest(url).get("parents", []):
        try:
            current = read_manifest(parent["path"])["content_hash"]
        except fs.ArtifactError:
            return f"its input {parent['path']} is missing"
        if current != parent["content_hash"]:
            return f"its input {parent['path']} changed since it was made"
    return None


def incomplete(step: Step) -> str | None:
    """Why `step` is not done (its outputs missing, made under another key or from other inputs)."""
    if step.kind == "report":
        key_file = join(step.folder, REPORT_KEY_FILE)
        if not fs.exists(step.output("report")) or not fs.exists(key_file):
            return "no report yet"
        return None if fs.read_bytes(key_file).decode().strip() == step.key else "the report is out of date"
    for role, out in step.outputs.items():
        url = step.output(role)
        reason = incomplete_reason(url, kind=out.kind, config_hash=step.key, verify_hash=False)
        if reason is None and step.kind == "evaluate" and not fs.exists(url.removesuffix(".parquet") + ".summary.json"):
            reason = f"{url} has no summary"
        if reason is None:
            reason = _parents_current(url)
        if reason is not None:
            return reason
    return None


def decide(steps: dict[str, Step], computed_before: dict[str, str] | None = None) -> dict[str, Decision]:
    """Reuse a step when its outputs are complete and none of its inputs runs; run it otherwise.
    What this says is what the flow does (it applies the same test to each step as it reaches it).
    `computed_before` ({step key: who}) names steps that runs going first will have computed (the
    earlier arms of an experiment): those are reused from them."""
    decisions: dict[str, Decision] = {}
    for name, step in steps.items():
        if computed_before and step.kind != "report" and step.key in computed_before:
            decisions[name] = Decision("reuse", producer=computed_before[step.key])
            continue
        running = [n for n in step.inputs.values() if decisions[n].action == "run"]
        if running:
            decisions[name] = Decision("run", f"its input {running[0]} runs")
            continue
        reason = incomplete(step)
        if reason is not None:
            decisions[name] = Decision("run", reason)
            continue
        info = read_step_info(step.folder) if step.kind != "report" else None
        decisions[name] = Decision("reuse", producer=(info or {}).get("run"))
    return decisions
