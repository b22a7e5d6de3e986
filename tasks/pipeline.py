"""Every step of a run, described once: the config fields it reads, its inputs, its outputs, its key.

    steps = pipeline_steps(cfg, layout)          # {name: Step} in pipeline order
    steps["iter-01/train"].output("student")     # where that output lives (the step store)
    plan = decide(steps)                         # tasks.gate: reuse (whose output) or run

A step's key hashes its kind, the values of exactly the config fields it reads, its iteration, the
keys of the steps whose outputs it reads and the code's cache version. A changed field therefore
changes the keys of the steps that read it and of everything downstream, and nothing else: another
learning rate keeps the teacher's keys, another `eval.max_tokens` keeps every training key. Outputs
live in the step store under the runs root (storage.step_store), so runs that agree on a step share
its output. The flow, `siked status` and `siked plan` all read this list; no other code builds keys.

Whether a step is done is read from its files by one rule, tasks.gate.
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
from storage.paths import DataDirMissing, RunLayout, data_dir, join
from storage.step_store import step_dir
from tasks.jobs.benchmarks import content_key, data_available, file_content_hash

KINDS = ("problems", "contamination", "generate", "verify", "distill_set", "mix", "train", "evaluate", "report",
         "train_set", "score")
# Bump when a change to the code must invalidate finished steps (the package version is part of the
# key too). Git commits alone do not: resuming after an unrelated fix must reuse finished work.
CACHE_VERSION = "3"  # 3: keys hash the step's job (distill.config declares execution-only fields)
# Per step kind: bump one when a change to that step's code changes what it writes; that step and
# everything downstream of it then run again, nothing upstream.
STEP_CODE_VERSIONS = {kind: "1" for kind in KINDS}
STEP_CODE_VERSIONS["mix"] = "2"  # `adaptive` became the reference code's per-(question, strategy) rule
STEP_CODE_VERSIONS["verify"] = "2"  # answer parser 2 (distill.verify.PARSER_VERSION)
# evaluate 2: answer parser 2; forced, sampled and strict scores. 3: multiple-choice questions get
# prompts of their own, and a multiple-choice label is scored as DSS scores it (its exact text).
STEP_CODE_VERSIONS["evaluate"] = "3"
STEP_CODE_VERSIONS["distill_set"] = "2"  # a file teacher's rationales kept right or wrong (given_rationales)
# train 2: multiple-choice prompts; checkpoints chosen on DSS's exact-text label score; token means
# over the whole optimizer step, label weights scaled to mean 1
STEP_CODE_VERSIONS["train"] = "2"
# score 2: the completion scored is the training text of the sample (distill_set.solution_text), so
# its ids are the target ids a training reads
STEP_CODE_VERSIONS["score"] = "2"
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
    """One job of the pipeline. `job` holds exactly the values its body is given from the config
    (whole sections or single values, narrowed per step); `reads` is their keyed JSON form: the
    job without its execution-only parts (fields declared `execution_only` in distill.config, and
    the step's own `unkeyed` paths). `inputs` maps a role to the name of the step whose output it
    reads. The key hashes `reads`, the inputs' keys and the code version, so a value is in the key
    if and only if the body is given it and it can change what the body writes."""

    name: str  # e.g. "iter-01/train"
    kind: str
    iteration: int | None
    job: dict[str, Any]
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


def as_json(value: Any, unkeyed: frozenset[str] = frozenset(), path: str = "", *, keyed: bool = True) -> Any:
    """The JSON form of a job value. With `keyed`, without what no key holds: a config section's
    execution-only fields (Section.unkeyed_fields) and the dotted `unkeyed` paths."""
    if isinstance(value, BaseModel):
        skip = value.unkeyed_fields() if keyed and hasattr(value, "unkeyed_fields") else set()
        return {name: as_json(getattr(value, name), unkeyed, f"{path}{name}", keyed=keyed)
                for name in type(value).model_fields
                if name not in skip and not (keyed and f"{path}{name}" in unkeyed)}
    if isinstance(value, dict):
        return {str(k): as_json(v, unkeyed, f"{path}{k}.", keyed=keyed) for k, v in value.items()
                if not (keyed and f"{path}{k}" in unkeyed)}
    if isinstance(value, list | tuple):
        return [as_json(v, unkeyed, path, keyed=keyed) for v in value]
    return value


def step_key(kind: str, reads: dict[str, Any], input_keys: dict[str, str], iteration: int | None) -> str:
    payload = {"kind": kind, "reads": reads, "inputs": input_keys, "iteration": iteration,
               "code": cache_version(), "step_code": STEP_CODE_VERSIONS[kind]}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@dataclass
class _Builder:
    runs_root: str
    steps: dict[str, Step] = field(default_factory=dict)

    def add(self, name: str, kind: str, iteration: int | None, job: dict[str, Any], inputs: dict[str, str],
            outputs: dict[str, Output], folder: str | None = None, unkeyed: tuple[str, ...] = (),
            key_extra: dict[str, Any] | None = None) -> Step:
        """A step whose body is given `job`; `unkeyed` names dotted paths of `job` it may read that
        cannot change what it writes; `key_extra` adds what the body reads from elsewhere (a data
        file's content hash)."""
        missing = [n for n in inputs.values() if n not in self.steps]
        if missing:
            raise ValueError(f"step {name}: its input {missing[0]} is no earlier step (a missing input or a cycle)")
        reads = {**as_json(job, frozenset(unkeyed)), **(key_extra or {})}
        key = step_key(kind, reads, {role: self.steps[n].key for role, n in inputs.items()}, iteration)
        step = Step(name, kind, iteration, job, reads, inputs, outputs, key,
                    folder or step_dir(self.runs_root, kind, key))
        self.steps[name] = step
        return step


# --------------------------------------------------------------------------- the list of steps


def eval_set_label(ref: BenchmarkRef) -> str:
    return ref.eval_label


def skipped_eval_sets(cfg: RunConfig) -> list[BenchmarkRef]:
    """Evaluation sets left out because their data folder is missing and `skip_if_missing` is set."""
    return [ref for ref in cfg.eval.benchmarks if ref.skip_if_missing and not data_available(ref, cfg.data_dir)]


def _add_problems(b: _Builder, name: str, ref: BenchmarkRef, cfg: RunConfig) -> None:
    """A problems step. Not part of its key: whether a missing data folder would skip the set, or
    where the data folder is; the keys only file benchmarks use, when unset (built-in sets kept their
    keys when those keys were added). A file benchmark's key holds its file's content hash."""
    unset = tuple(f"ref.{key}" for key in FILE_BENCHMARK_KEYS if getattr(ref, key) is None)
    b.add(name, "problems", None, {"ref": ref, "data_folder": cfg.data_dir}, {},
          {"problems": Output("problems.parquet", "problems")},
          unkeyed=("ref.skip_if_missing", "data_folder", *unset), key_extra=content_key(ref))


def _problems(b: _Builder, cfg: RunConfig) -> list[str]:
    _add_problems(b, "problems/train", cfg.train_data, cfg)
    names = []
    skipped = skipped_eval_sets(cfg)
    for ref in cfg.eval.benchmarks:
        if ref in skipped:
            continue
        name = f"problems/eval-{eval_set_label(ref)}"
        _add_problems(b, name, ref, cfg)
        names.append(name)
    return names


def _evaluate(b: _Builder, cfg: RunConfig, stage: str, eval_sets: list[str], model_step: str | None,
              model_spec: str | None = None) -> None:
    """`<stage>/evaluate`: the model (a train step's student, or `model_spec`) on every set and mode."""
    if not eval_sets:
        return
    sampled = "sampled" in cfg.eval.modes  # self-consistency draws: its seed and settings count
    job = {"engine": cfg.siked.engine, "verify": cfg.verify, "max_tokens": cfg.eval.max_tokens,
           "self_consistency": cfg.eval.self_consistency if sampled else None}
    if "label" in cfg.eval.modes:
        # `auto` is resolved in the body, from the problems and the model's tokenizer it reads: both
        # are in the key already (the problems steps' and the model's), so the setting is enough.
        job["label_max_tokens"] = cfg.eval.label_max_tokens
    if model_spec is not None:
        job["model"] = model_spec
    # What decides the outputs beyond the job: the modes (one output each), and how bare answers
    # are read (only label-mode predictions depend on it).
    extra: dict[str, Any] = {"modes": list(cfg.eval.modes)}
    if "label" in cfg.eval.modes:
        extra["label_parser"] = LABEL_PARSER_VERSION
    inputs = {f"problems:{name.removeprefix('problems/eval-')}": name for name in eval_sets}
    if model_step:
        inputs["model"] = model_step
    if cfg.eval.decontamination.drop and CONTAMINATION in b.steps:
        inputs["contamination"] = CONTAMINATION  # the overlapping questions it leaves out
    outputs = {f"{label}/{mode}": Output(f"{label}-{mode}.parquet", prediction_kind(mode))
               for label in (name.removeprefix("problems/eval-") for name in eval_sets) for mode in cfg.eval.modes}
    # Greedy decoding draws nothing: the engine's seed does not change what an evaluation writes,
    # so the seeds of an experiment share the untrained student's evaluation.
    b.add(f"{stage}/evaluate", "evaluate", None if stage == "base" else _iteration_of(stage), job, inputs, outputs,
          unkeyed=() if sampled else ("engine.seed",), key_extra=extra)


CONTAMINATION = "problems/contamination"


def _contamination(b: _Builder, cfg: RunConfig, eval_sets: list[str]) -> None:
    """Overlap of every evaluation set with the training problems (and the prompt exemplars); whether
    evaluations then leave them out (`drop`) is the evaluations' business, not this step's."""
    if not eval_sets:
        return
    inputs = {"train": "problems/train", **{f"problems:{n.removeprefix('problems/eval-')}": n for n in eval_sets}}
    b.add(CONTAMINATION, "contamination", None, {"cfg": cfg.eval.decontamination}, inputs,
          {"overlaps": Output("overlaps.parquet", "overlaps")}, unkeyed=("cfg.drop",))


def summary_url_of(predictions_url: str) -> str:
    """The summary (accuracy, histograms, protocol) written beside an evaluation's predictions."""
    return predictions_url.removesuffix(".parquet") + ".summary.json"


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
    job: dict[str, Any] = {"cfg": cfg.train}
    if cfg.train.select_on == "label":
        # Label-mode checkpoint selection scores bare answers as evaluation does: the same budget
        # (`auto` resolved from the validation labels and the student's tokenizer, both read by the
        # body from its inputs) and the same tolerance.
        job |= {"label_max_tokens": cfg.eval.label_max_tokens, "rel_tol": cfg.verify.rel_tol}
    if cfg.train.schedule_across_rounds == "continue":
        # One schedule over every round: this round's place in it, and how many rounds share it.
        job["schedule_round"] = (iteration, cfg.siked.iterations + 1)
    scored_inputs, scored_job = _scored_training(cfg, iteration)
    inputs |= scored_inputs
    job |= scored_job
    b.add(f"{stage}/train", "train", iteration, job, inputs,
          {"student": Output("student", None), "metrics": Output("train_metrics.parquet", "train_metrics")})
    return f"{stage}/train"


def _verify_and_select(b: _Builder, cfg: RunConfig, iteration: int) -> None:
    stage = f"iter-{iteration:02d}"
    b.add(f"{stage}/verify", "verify", iteration, {"cfg": cfg.verify},
          {"samples": f"{stage}/generate", "problems": "problems/train"},
          {"verified": Output("verified.parquet", "verified")})
    # A biased chain (SIKeD's CoT-, L2M- and PoT-biased runs) biases the teacher's set, the round-0
    # training set; later rounds bias their mixture (the mix step), as the reference does.
    job: dict[str, Any] = {"biased": cfg.teacher.biased if iteration == 0 else None}
    if iteration == 0 and cfg.teacher.engine.kind == "file":  # rationales given, not generated
        job["given_rationales"] = cfg.teacher.given_rationales
    if iteration > 0 and cfg.token_level.use == "on_policy":
        job["keep"] = "all"  # on-policy distillation trains on every sample, right or wrong
    b.add(f"{stage}/distill_set", "distill_set", iteration, job,
          {"verified": f"{stage}/verify", "problems": "problems/train"},
          {"distill_set": Output("distill_set.parquet", "train_examples")})


FREE_CHOICE = "free_choice"  # forced self-generation: the free-choice samples that give P_SM


def _data_dir_if_any(cfg: RunConfig) -> str | None:
    """Where the `file` engine finds relative rationale files (the data folder), if there is one."""
    try:
        return str(data_dir(cfg.data_dir))
    except DataDirMissing:
        return None


def _generate(b: _Builder, cfg: RunConfig, iteration: int, student: str | None) -> None:
    """The teacher's samples (iteration 0, every strategy) or the current student's: every taught
    strategy primed (`forced`), plus free-choice samples that measure P_SM, or its own pick (`free`)."""
    if student is None:
        teacher = cfg.teacher
        job = {"engine": teacher.engine, "sampling": teacher.sampling, "strategies": tuple(teacher.strategies),
               "shard_size": teacher.shard_size, "shots": teacher.shots, "source": "teacher",
               "data_dir": _data_dir_if_any(cfg) if teacher.engine.kind == "file" else None}
        b.add("iter-00/generate", "generate", 0, job, {"problems": "problems/train"},
              {"samples": Output("samples", "samples")}, unkeyed=("data_dir",))
        return
    siked = cfg.siked
    forced = siked.self_generation == "forced"
    # Forced: the strategies the student was taught, each primed; free: none, the student picks.
    job = {"engine": siked.engine, "sampling": siked.sampling, "self_generation": siked.self_generation,
           "strategies": tuple(cfg.teacher.strategies) if forced else (),
           "shard_size": cfg.teacher.shard_size, "source": "student"}
    outputs = {"samples": Output("samples", "samples")}
    if forced:  # forced samples say nothing of the student's own choice: P_SM is measured apart
        job["free_choice_samples"] = siked.free_choice_samples
        outputs[FREE_CHOICE] = Output(FREE_CHOICE, "samples")
    b.add(f"iter-{iteration:02d}/generate", "generate", iteration, job, {"problems": "problems/train", "student": student},
          outputs)


def _score(b: _Builder, cfg: RunConfig, iteration: int, student: str | None) -> None:
    """`iter-0t/score` (`token_level.use`): the round's training rows (its distillation set: the
    samples a training can read, in the text it trains on) scored by the teacher, or by the student
    that generated them shown the gold answer (`self`). Its body encodes with the student's
    tokenizer, so the student is an input either way (in the teacher round, `train.model`, the
    student to be); with `self` it is also the scorer. Scoring is greedy and reads no chat
    template, so the engine's seed and template, and its replicas (it runs as one), change nothing
    it writes; nor do the guards (execution-only), which only stop it."""
    level = cfg.token_level
    job: dict[str, Any] = {"teacher": level.teacher, "top_k": level.top_k, "engine": cfg.scoring_engine(),
                           "shard_size": cfg.teacher.shard_size, "guards": level.guards,
                           "guard_samples": level.guard_samples}
    inputs = {"rows": f"iter-{iteration:02d}/distill_set"}
    if student is None:
        job["student_model"] = cfg.train.model
    else:
        inputs["student"] = student
    b.add(f"iter-{iteration:02d}/score", "score", iteration, job, inputs,
          {"token_scores": Output("token_scores", "token_scores")},
          unkeyed=("engine.seed", "engine.chat_template", "engine.replicas", "guards", "guard_samples"))


def _scored_training(cfg: RunConfig, iteration: int) -> tuple[dict[str, str], dict[str, Any]]:
    """(inputs, job) a training adds when it reads the teacher's scores of its round's samples:
    the scores, the term, and which rows they describe (the samples of that round's generation)."""
    level = cfg.token_level
    if not level.trains or iteration not in level.scored_iterations(cfg.siked.iterations):
        return {}, {}
    term = {"kind": level.divergence_kind(), "weight": level.weight, "supervised": level.use != "on_policy"}
    if term["kind"] == "jsd":
        term["beta"] = level.jsd_beta
    rows = ("teacher", 0) if iteration == 0 else ("student", iteration)
    return {"token_scores": f"iter-{iteration:02d}/score"}, {"token_term": term, "scored_rows": rows}


def pipeline_steps(cfg: RunConfig, layout: RunLayout) -> dict[str, Step]:
    """Every step `cfg` asks for, in the order the flow runs them, the report last."""
    b = _Builder(layout.root)
    eval_sets = _problems(b, cfg)
    _contamination(b, cfg, eval_sets)
    if cfg.eval.evaluate_base:
        _evaluate(b, cfg, "base", eval_sets, None, model_spec=cfg.train.model)
    _generate(b, cfg, 0, None)
    scored = cfg.token_level.scored_iterations(cfg.siked.iterations)
    _verify_and_select(b, cfg, 0)
    if 0 in scored:
        _score(b, cfg, 0, None)
    student = _train(b, cfg, 0, "iter-00/distill_set")
    _evaluate(b, cfg, "iter-00", eval_sets, student)
    for iteration in range(1, cfg.siked.iterations + 1):
        stage = f"iter-{iteration:02d}"
        _generate(b, cfg, iteration, student)
        _verify_and_select(b, cfg, iteration)
        if iteration in scored:
            _score(b, cfg, iteration, student)
        if cfg.token_level.use == "on_policy":  # no filter, no mix: every sample, scored
            student = _train(b, cfg, iteration, f"{stage}/distill_set")
            _evaluate(b, cfg, stage, eval_sets, student)
            continue
        target = alpha_for_iteration(cfg.siked.alpha_schedule, iteration) if cfg.siked.mixing == "alpha" else None
        inputs = {"self_set": f"{stage}/distill_set", "verified": f"{stage}/verify",
                  "teacher_set": "iter-00/distill_set"}
        if FREE_CHOICE in b.steps[f"{stage}/generate"].outputs:
            inputs[FREE_CHOICE] = f"{stage}/generate"  # P_SM from the free-choice samples
        b.add(f"{stage}/mix", "mix", iteration, {"rule": cfg.siked.mixing, "seed": cfg.seed, "target_alpha": target,
                                                 "biased": cfg.teacher.biased},
              inputs, {"train_set": Output("train_set.parquet", "train_examples")})
        student = _train(b, cfg, iteration, f"{stage}/mix")
        _evaluate(b, cfg, stage, eval_sets, student)
    # The report is the run's own (it shows the run's config): it lives in the run folder.
    reported = {name: name for name, s in b.steps.items() if s.kind in ("evaluate", "train", "mix", "distill_set")}
    b.add("report", "report", None, {"run": layout.run_id}, reported, {"report": Output(REPORT_FILE, None)},
          folder=layout.run_dir)
    return b.steps


def train_only_steps(cfg: RunConfig, layout: RunLayout, *, train_set: str | None, given_rationales: bool,
                     iteration: int = 0) -> dict[str, Step]:
    """`siked train`: the steps that make its training rows, then `iter-NN/train` from `train.model`.
    The rows are the file `train_set` (its content hash in the key, its path not), the rationales
    `train_data` brings (`given_rationales`), or the pipeline's own teacher round."""
    b = _Builder(layout.root)
    if train_set is not None or given_rationales:
        if cfg.train.format == "dss":  # its labels are the problems' answer_text
            _add_problems(b, "problems/train", cfg.train_data, cfg)
        job = ({"path": train_set} if train_set is not None
               else {"ref": cfg.train_data, "data_folder": cfg.data_dir,
                     "given_rationales": cfg.teacher.given_rationales})
        extra = {"file_sha256": file_content_hash(train_set)} if train_set is not None else {}
        b.add("train_set", "train_set", None, job, {},
              {"train_set": Output("train_set.parquet", "train_examples")},
              unkeyed=("path", "data_folder", "ref.skip_if_missing"), key_extra=extra)
        source = "train_set"
    else:
        _add_problems(b, "problems/train", cfg.train_data, cfg)
        _generate(b, cfg, 0, None)
        _verify_and_select(b, cfg, 0)
        source = "iter-00/distill_set"
    inputs = {"train_set": source}
    if cfg.train.format == "dss":
        inputs["problems"] = "problems/train"  # the labels as the dataset writes them (answer_text)
    b.add(f"iter-{iteration:02d}/train", "train", iteration, {"cfg": cfg.train}, inputs,
          {"student": Output("student", None), "metrics": Output("train_metrics.parquet", "train_metrics")})
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
