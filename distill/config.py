"""Typed run configuration: the schema of every YAML file under configs/.

YAML only fills these objects; `key=value` overrides (dotted paths, values parsed as YAML)
are applied before validation. Unknown or mistyped keys fail at once with the key's path and
a suggestion. `section_hash` gives a stable hash of one section for cache keys.

    from distill.config import load_config
    cfg = load_config(yaml_text, overrides=["teacher.sampling.n=2"])
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from distill.strict_yaml import load_yaml, yaml_problem

Strategy = Literal["cot", "l2m", "pot"]
ALL_STRATEGIES: tuple[str, ...] = ("cot", "l2m", "pot")
BenchmarkName = Literal["gsm8k", "svamp", "asdiv", "multiarith", "dss_svamp", "dss_cqa", "arith", "file"]
BUILTIN_BENCHMARKS: tuple[str, ...] = ("gsm8k", "svamp", "asdiv", "multiarith", "dss_svamp", "dss_cqa", "arith")
# The keys only `name: file` uses; left out of a built-in benchmark's step key, so adding them kept those keys.
FILE_BENCHMARK_KEYS: tuple[str, ...] = ("path", "repo", "config", "question", "answer", "id", "choices",
                                        "rationale", "alias")
BUILTIN_MODEL = "builtin:smollm2-135m-instruct"


class ConfigError(ValueError):
    """A configuration problem, with the dotted path of the offending key."""


EXECUTION_ONLY = {"execution_only": True}


def execution_only(default: Any = None, **kwargs: Any) -> Any:
    """A field that changes how a step runs, never what it writes (a timeout, a thread count, where
    the engine core runs): steps may read it, and it stays out of every step key
    (tasks.pipeline.as_json), so changing it never recomputes finished work."""
    return Field(default, json_schema_extra=EXECUTION_ONLY, **kwargs)


def plain_name(value: str, what: str) -> str:
    """`value` unchanged when it can be one component of a file or folder name; a ValueError naming
    `what` otherwise. Run names, splits, aliases and labels end up in paths (run folders, problem
    ids, evaluation files): a `/` or `..` would write outside the folder meant, a NUL cuts the path
    short, and a leading dot hides the file from listings."""
    problem = ("is empty" if not value
               else "holds '/' or '\\'" if "/" in value or "\\" in value
               else "holds '..'" if ".." in value
               else "holds a NUL character" if "\0" in value
               else "starts with '.'" if value.startswith(".")
               else None)
    if problem:
        raise ValueError(f"{what} {value!r} {problem}: it becomes part of a path, so it must be a plain name")
    return value


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    def unkeyed_fields(self) -> set[str]:
        """This section's fields that no step key holds: those declared `execution_only`."""
        return {name for name, info in type(self).model_fields.items() if info.json_schema_extra == EXECUTION_ONLY}


class BenchmarkRef(Section):
    """A set of problems: a built-in benchmark by name, or `name: file`, problems from any file or Hub
    dataset with the record fields to read (docs/datasets.md, "Your own problems")."""

    name: BenchmarkName = "arith"
    """Benchmark to load (see `siked data list`), or `file`."""
    split: str = "test"
    """Split: `train` or `test` (GSM8K, arith, dss_*); SVAMP/MultiArith have `test` only; ASDiv has
    `test` (all 2,305 problems) and `arithmetic` (ASDiv-A, its 1,218-problem arithmetic subset, local
    files only; ids as in `test`). For `file`, the Hub split (source hub) or just a name that goes
    into the problem ids (local)."""
    limit: int | None = Field(default=None, ge=1)
    """Keep the first `limit` problems after a seeded shuffle (a stable subset); None keeps all."""
    source: Literal["local", "hub"] = "local"
    """`local` reads the original files in the data folder (`file`: the file at `path`); `hub` loads
    through `datasets` (`file`: the dataset `repo`)."""
    difficulty: int = Field(default=1, ge=1, le=4)
    """arith only: number of operations per problem (1 to 4)."""
    size: int = Field(default=200, ge=1)
    """arith only: number of problems generated for the split."""
    seed: int = 0
    """Seed of the arith generator and of the subset shuffle."""
    skip_if_missing: bool = False
    """Skip this benchmark (with a warning) when the data folder (`file`: the file) is not available."""
    path: str | None = None
    """file, source local: the file, a local path (relative to the directory siked runs in) or an
    fsspec URL. Format by extension: `.jsonl`, `.json` (a list of records, or JSON Lines), `.csv`,
    `.parquet`, optionally compressed (`.jsonl.gz`)."""
    repo: str | None = None
    """file, source hub: the Hub dataset (`owner/name`), read with `datasets.load_dataset`."""
    config: str | None = None
    """file, source hub: the dataset's configuration name, if it has several."""
    question: str | None = None
    """file: the record field holding the question, a dotted path (`meta.question`, `turns.0`)."""
    answer: str | None = None
    """file: the field holding the gold answer: a number, a numeric string (`1,080`, `$5`, `#### 72`,
    `( 84.0 / 2.0 )`), or with `choices` the correct choice's letter or text."""
    id: str | None = None
    """file: the field holding a record's id; default its 0-based position in the file."""
    choices: str | list[str] | None = None
    """file: the field holding the choices of a multiple-choice problem (a list of texts, of
    `A) text` strings, `{label: [...], text: [...]}`, or a JSON list in a CSV cell), or a list of
    fields holding one choice each (`[A, B, C, D]`)."""
    rationale: str | None = None
    """file: the field holding a worked solution; kept as the problem's reference, and the rationale
    `siked train` trains on (as DSS's released rationales)."""
    alias: str | None = None
    """file: the name the set goes by in problem ids, reports and step names; default the file's stem
    (or the Hub dataset's name)."""
    label: str | None = None
    """Evaluation sets: the name the set's steps and prediction files go by (`problems/eval-<label>`,
    `<label>-<mode>.parquet`) and the report shows; default `<name>-<split>` (AddSub's
    `questions.json` would otherwise be `questions-test`). Problem ids keep the name."""

    @field_validator("split")
    @classmethod
    def _split_is_a_plain_name(cls, value: str) -> str:
        return plain_name(value, "split")

    @field_validator("label")
    @classmethod
    def _label_is_a_plain_name(cls, value: str | None) -> str | None:
        return value if value is None else plain_name(value, "label")

    @model_serializer(mode="wrap")
    def _unset_label_is_not_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Dumps are hashed into run ids and step keys: a set without a label dumps as it did
        # before `label` existed, so its run and its steps keep their keys.
        data = handler(self)
        if isinstance(data, dict) and data.get("label", "") is None:
            del data["label"]
        return data

    @model_validator(mode="after")
    def _file_keys_belong_to_file(self) -> BenchmarkRef:
        given = [key for key in FILE_BENCHMARK_KEYS if getattr(self, key) is not None]
        if self.name != "file":
            if given:
                raise ValueError(f"{', '.join(given)}: only for `name: file` (this is {self.name})")
            return self
        missing = [key for key in ("question", "answer") if getattr(self, key) is None]
        where = "path" if self.source == "local" else "repo"
        if getattr(self, where) is None:
            missing.insert(0, where)
        if missing:
            raise ValueError(f"name: file (source {self.source}) needs {', '.join(missing)}")
        unused = "repo" if self.source == "local" else "path"
        if getattr(self, unused) is not None or (self.source == "local" and self.config is not None):
            raise ValueError(f"name: file with source {self.source} reads `{where}`; "
                             f"remove {'repo/config' if self.source == 'local' else 'path'}")
        name = self.benchmark_name
        if not name or any(c in name for c in "/\\:\0 ") or ".." in name or name.startswith(".") \
                or name in BUILTIN_BENCHMARKS:
            raise ValueError(f"alias {name!r}: a file benchmark needs a plain name (no '/', ':', spaces) "
                             "that is not a built-in benchmark's; set `alias`")
        return self

    @property
    def benchmark_name(self) -> str:
        """What the set is called in problem ids, reports and step names."""
        if self.name != "file":
            return self.name
        if self.alias:
            return self.alias
        where = self.path if self.source == "local" else self.repo
        stem = (where or "").rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".gz", ".bz2", ".xz", ".zst", ".jsonl", ".json", ".csv", ".parquet"):
            stem = stem.removesuffix(suffix)
        return stem

    @property
    def eval_label(self) -> str:
        """What the set is called as an evaluation set: `label`, else `<name>-<split>`."""
        return self.label or f"{self.benchmark_name}-{self.split}"

    @property
    def is_multiple_choice(self) -> bool:
        return self.name == "dss_cqa" or (self.name == "file" and self.choices is not None)

    @property
    def reads_data_folder(self) -> bool:
        """Whether loading needs the data folder of original files (SIKED_DATA_DIR)."""
        return self.source == "local" and self.name not in ("arith", "file")


class SamplingConfig(Section):
    n: int = Field(default=10, ge=1)
    """Samples per (question, strategy) prompt."""
    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling: the smallest set of tokens holding this much probability."""
    max_tokens: int = Field(default=512, ge=1)
    """Maximum new tokens per sample."""
    stop: list[str] = Field(default_factory=lambda: ["### Instruction", "### Input", "### Response"])
    """Stop strings: the next exemplar boundary of the few-shot format."""


class EngineConfig(Section):
    kind: Literal["vllm", "openai", "file", "transformers"] = "vllm"
    """`vllm` (offline vllm.LLM), `openai` (an OpenAI-compatible endpoint), `file` (pre-generated
    rationales), `transformers` (batched generate, for comparison and tiny test models)."""
    model: str = BUILTIN_MODEL
    """Local folder, `builtin:smollm2-135m-instruct`, or a Hugging Face Hub id."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """Render prompts through the tokenizer's chat template (`auto`: when the model has one)."""
    seed: int = 0
    """Engine-level seed (vLLM on CPU rejects per-request seeds)."""
    dtype: str = "auto"
    """Weights' dtype. On CPUs without AVX-512 (these machines) float32 is about 4x faster than bfloat16."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """vLLM: GPUs one engine shards its weights over."""
    gpu_memory_utilization: float = execution_only(0.3, gt=0.0, le=1.0)
    """On GPUs the share of device memory; on vLLM-CPU the share of host RAM for the KV cache.
    Execution-only, except with `deterministic` (whether a shard's sequences fit the KV cache
    together decides whether its samples repeat)."""
    max_model_len: int | None = 4096
    """Longest prompt plus completion the engine accepts, in tokens."""
    enable_lora: bool = False
    """vLLM: serve LoRA adapters on top of the base weights."""
    enforce_eager: bool | None = None
    """vLLM: None runs eagerly on CPU builds (compiling there costs minutes at every start and its
    cache does not reload) and compiled on GPUs."""
    in_process: bool | None = execution_only(None)
    """vLLM: run the engine core in the step's own process rather than in a process of its own.
    None: in-process on CPU builds (a process of its own costs about 23 s more to start and 4 s more
    to stop on 2 cores, for the same tokens/s: BENCHMARKS.md, "Start-up"), its own process on GPUs
    (where it schedules while the GPU computes). `deterministic` always runs in-process."""
    vllm_args: dict[str, Any] = Field(default_factory=dict)
    """Extra `vllm.LLM` keyword arguments, passed through untouched."""
    base_url: str | None = None
    """openai: endpoint such as http://127.0.0.1:8000/v1."""
    api_key_env: str = execution_only("OPENAI_API_KEY")
    """openai: name of the environment variable holding the API key (never the key itself)."""
    concurrency: int = execution_only(16, ge=1)
    """openai: requests in flight at once."""
    max_retries: int = execution_only(5, ge=0)
    """openai: retries of a failed request."""
    request_timeout_s: float = execution_only(600.0, gt=0)
    """openai: seconds before a request is abandoned (and retried)."""
    files: list[str] = Field(default_factory=list)
    """file: rationale files (relative paths resolve against the data folder)."""
    deterministic: bool = False
    """Repeatable sampling (vllm, transformers): each shard is generated in a batch of its own with
    the sampler reseeded to a hash of `seed` and the shard index, so its samples do not depend on
    timing, batching or which shards ran before; vLLM then runs its engine core in-process, on one
    CPU thread on CPU builds and with batch-invariant kernels on GPUs (VLLM_BATCH_INVARIANT). Slower:
    shards no longer share batches (BENCHMARKS.md, "Repeatable seeds")."""
    replicas: int = Field(default=1, ge=1)
    """Engine replicas (Ray) for sharded generation; 1 runs in one child process."""
    ray_address: str | None = execution_only(None)
    """Ray cluster to run `replicas` on (None: a local one)."""

    def unkeyed_fields(self) -> set[str]:
        # With `deterministic`, the KV cache share decides whether a shard's samples repeat.
        unkeyed = super().unkeyed_fields()
        return unkeyed - {"gpu_memory_utilization"} if self.deterministic else unkeyed


class TeacherConfig(Section):
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    strategies: list[Strategy] = Field(default_factory=lambda: list(ALL_STRATEGIES))
    """Strategies the teacher solves every problem with (chain of thought, least-to-most, program of thought)."""
    shard_size: int = Field(default=64, ge=1)
    """Questions per Parquet shard: a crash loses at most one shard."""
    shots: int = Field(default=8, ge=0, le=8)
    """Worked exemplars in each prompt (the papers use 8; fewer make shorter, faster prompts)."""
    biased: Strategy | None = None
    """Keep one row per question by this strategy's priority (e.g. cot: cot > pot > l2m), in the
    teacher's set and in the student's set of every iteration (SIKeD's biased chains)."""
    given_rationales: Literal["all", "correct"] = "all"
    """Rationales given rather than generated (a `file` engine; `siked train` on dss_svamp or dss_cqa):
    `all` trains on every one that states an answer, whatever answer it states, its answer statement
    replaced by the gold, as Distilling Step-by-Step's loader does; `correct` keeps only those whose
    answer is right. A generated teacher's samples are always kept only when correct (SIKeD)."""


class VerifyConfig(Section):
    timeout_s: float = Field(default=5.0, gt=0)
    """Wall-clock limit per PoT program."""
    cpu_seconds: int = Field(default=5, ge=1)
    """CPU-time limit per PoT program (RLIMIT_CPU)."""
    memory_mb: int = Field(default=1024, ge=64)
    """Address-space limit per PoT program."""
    max_output_kb: int = Field(default=64, ge=1)
    """Output a PoT program may print before it is stopped."""
    workers: int = execution_only(2, ge=1)
    """Sandbox processes running programs at once."""
    rel_tol: float = 1e-6
    """Relative tolerance when comparing a numeric answer with the gold one."""


class LoraConfig(Section):
    enabled: bool = True
    """Train LoRA adapters (merged into the student when training ends); False trains every weight."""
    r: int = Field(default=16, ge=1)
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch's input."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters (attention and MLP projections by default)."""
    last_layers: int | None = Field(default=None, ge=1)
    """Adapt only the last N decoder layers (None: all). The backward pass then stops at the
    lowest adapted layer, so a step costs less: the CPU quickstart's setting."""


class LossConfig(Section):
    kind: Literal["sft", "dss", "dss_mi", "dss_infonce"] = "dss_mi"
    """`sft`: rationale task only; `dss`: alpha*label + (1-alpha)*rationale; `dss_mi`: + beta * MI
    (parameter-free, as the MI reference code); `dss_infonce`: + beta * learned InfoNCE bound."""
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    """Weight of the label task; the rationale task gets 1 - alpha (DSS's lambda split)."""
    beta: float = Field(default=0.1, ge=0.0)
    """Weight of the MI (or InfoNCE) term tying the two tasks' representations together."""
    chunk_size: int = Field(default=64, ge=1)
    """Sequence positions per chunk when pooling softmax maxima (bounds MI memory)."""
    infonce_dim: int = Field(default=128, ge=1)
    """`dss_infonce`: width of the learned projection both tasks' pooled states are mapped to."""
    infonce_temperature: float = Field(default=0.1, gt=0)
    """`dss_infonce`: temperature of the InfoNCE logits."""
    label_weighting: Literal["per_question", "per_row"] = "per_question"
    """How the label task counts a question with k kept solutions (k rows, k identical label
    targets): `per_question` weighs each of its label rows 1/k, so every question counts once in
    the label loss, as in DSS (one row per question); `per_row` counts it k times."""


class TrainConfig(Section):
    model: str = BUILTIN_MODEL
    """Student to start from (iteration 0); later iterations continue from the previous student."""
    loss: LossConfig = Field(default_factory=LossConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: float = Field(default=2e-4, gt=0)
    """Peak learning rate (AdamW)."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warm-up."""
    warmup_steps: int = Field(default=5, ge=0)
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    schedule_across_rounds: Literal["restart", "continue"] = "restart"
    """`restart`: every round (the teacher-data round and each SIKeD iteration) warms up and decays a
    schedule of its own, as SIKeD's reference does (a fresh trainer per round). `continue`: one
    schedule over all rounds, as one pass of the same steps has: warm-up in the first round only,
    decay spanning `max_steps` x (`siked.iterations` + 1) steps, each round taking its share (needs
    `max_steps`). AdamW's moments start afresh either way: with LoRA each round trains a new adapter
    on the merged weights, so the previous round's moments belong to parameters merged away."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    batch_size: int = Field(default=8, ge=1)
    """Examples (packed rows with `packing`) per optimizer step, over every process and micro-batch."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step and process, each of batch_size / (nproc * grad_accum)
    examples: it trades memory for time, and the step's token means do not depend on it
    (losses.StepNorm)."""
    epochs: float = Field(default=3.0, gt=0)
    """Passes over the training set (fractions allowed), unless `max_steps` is set."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (overrides epochs when set)."""
    max_length: int = Field(default=1024, ge=16)
    """Longest training sequence in tokens (prompt plus target); longer ones are cut."""
    packing: bool = False
    """Pack several short examples into one sequence of `max_length`."""
    grad_clip: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more time."""
    checkpoint_every: int = execution_only(50, ge=1)
    """Optimizer steps between resumable checkpoints (a killed training resumes from the newest)."""
    eval_every: int | None = None
    """Validate every N steps (None: at the end of each epoch)."""
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of training question ids held out for validation and checkpoint selection."""
    select_on: Literal["rationale", "label"] = "rationale"
    """The validation accuracy that picks the kept checkpoint (ties: the lower supervised validation
    loss): `rationale`, greedy strategy-tagged solutions verified like evaluation's (the mode SIKeD
    reports, and the student that seeds the next self-generation), or `label`, the bare answer
    (DSS's protocol). `sft` trains no label task and must select on `rationale`."""
    format: Literal["siked", "dss"] = "siked"
    """What the two tasks' targets hold. `siked`: the rationale is `[strategy]: solution` ending with
    its final answer, the label the bare number. `dss` (Distilling Step-by-Step's own): the
    rationale as the teacher released it, cut before its answer statement (`The answer is`), no
    strategy tag; the label as the dataset defines it (`answer_text`: SVAMP's equation string,
    scored by evaluating it). Rationales then carry no answer: `dss` selects on `label` and trains
    one pass (siked.iterations 0)."""
    val_max_tokens: int = Field(default=256, ge=1)
    """New tokens per validation answer in rationale mode: the training's own budget, so that
    changing `eval.*` never retrains."""
    seed: int = 42
    """Seed of the training order, dropout and validation split (follows the run's `seed` unless set)."""
    distributed: Literal["none", "ddp", "fsdp"] = "none"
    """Multi-process training: `ddp` (replicated weights) or `fsdp` (sharded), over `nproc` processes."""
    nproc: int = Field(default=1, ge=1)
    """Training processes (GPUs) for `distributed`."""
    tensorboard: bool = execution_only(False)
    """Also write TensorBoard event files beside the training metrics."""
    continue_from_previous: bool = True
    """Iterations >= 1 start from the previous student (LoRA merged); False restarts from `model`."""

    @model_validator(mode="after")
    def _one_schedule_needs_known_rounds(self) -> TrainConfig:
        if self.schedule_across_rounds == "continue" and self.max_steps is None:
            raise ValueError("train.schedule_across_rounds=continue needs train.max_steps: one schedule over "
                             "every round must know each round's length before the first one trains")
        if self.schedule_across_rounds == "continue" and not self.continue_from_previous:
            raise ValueError("train.schedule_across_rounds=continue needs train.continue_from_previous=true: "
                             "a round that restarts from the base model starts a schedule of its own")
        return self


    @model_validator(mode="after")
    def _sft_selects_on_rationale(self) -> TrainConfig:
        if self.loss.kind == "sft" and self.select_on == "label":
            raise ValueError("train.select_on=label with train.loss.kind=sft: the label task is not trained, "
                             "so its accuracy cannot pick a checkpoint (use select_on: rationale)")
        if self.format == "dss" and (self.loss.kind == "sft" or self.select_on != "label"):
            raise ValueError("train.format=dss: its rationales carry no answer, so the label task is what "
                             "answers; it needs a loss with the label task (not sft) and train.select_on=label")
        return self


class SikedConfig(Section):
    iterations: int = Field(default=3, ge=0)
    """Self-generation iterations after the teacher-data round (iteration 0)."""
    mixing: Literal["adaptive", "adaptive_question", "all", "standard", "teacher", "alpha"] = "adaptive"
    """`adaptive`: the student's correct samples plus the teacher's rows of every (question, strategy)
    the student did not solve (SIKeD's reference code); `adaptive_question`: teacher rows only for
    questions solved with no strategy; `all`: every teacher row; `standard`: none (on-policy);
    `teacher`: the teacher rows only (off-policy, the student's samples unused); `alpha`: a target
    teacher fraction per iteration (`alpha_schedule`)."""
    alpha_schedule: list[float] = Field(default_factory=lambda: [0.9, 0.5, 0.2])
    """`alpha` mixing: target teacher fraction for iterations 1, 2, ... (last value repeats)."""
    self_generation: Literal["forced", "free"] = "forced"
    """How the student samples in iterations >= 1. `forced` (SIKeD's reference code,
    `forced_strategy_inference.py`): each of the teacher's strategies primed by its tag, so `n` is
    per question AND strategy; `free`: the student writes its own tag, `n` per question. Either way
    P_SM is the student's free choice: `free` reads it from its samples, `forced` draws
    `free_choice_samples` more per question to measure it."""
    free_choice_samples: int = Field(default=1, ge=1)
    """`forced` only: free-choice samples per training question (same sampling settings otherwise)
    that measure P_SM, the student's own strategy distribution; they train nothing."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Student self-generation sampling (`n` samples per training question, per strategy when
    `self_generation` is `forced`)."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Engine settings for student generation; its `model` is replaced by the current student."""


class TokenLevelConfig(Section):
    use: Literal["none", "record", "on_policy", "siked", "word_level"] = "none"
    """What the teacher's token-level signal is for (docs/method.md, "Three ways to use the teacher's
    scores"). `none`: nothing is scored. `record`: each self-generation round's samples are scored
    (`iter-0t/score`, `token_scores`) and nothing trains on them. `on_policy`: on-policy
    distillation; each round the student samples, the teacher scores, and the student trains on the
    `divergence` alone over all its samples, unfiltered (no verdicts, no mixing). `siked`: SIKeD's
    filtered, mixed rows, plus the divergence on the rows the teacher scored (the round's own
    samples). `word_level`: the teacher's own samples scored in the teacher round
    (`iter-00/score`), its rows trained with the divergence beside the supervised terms; later
    rounds are SIKeD's."""
    teacher: Literal["separate", "self"] = "separate"
    """Who scores. `separate`: the run's teacher (`teacher.engine`, its model), which must share the
    student's tokenizer (refused before any work otherwise, naming both). `self`: the privileged
    self-teacher, the student that generated the samples (the round's starting student, with
    `siked.engine`; `train.model` in the teacher round), shown the gold answer
    (`privileged_prompt`) before the completion it scores."""
    top_k: int = Field(default=20, ge=1)
    """Teacher tokens kept per completion position, likeliest first. vLLM serves at most its
    `max_logprobs` (20 unless the scoring engine's `vllm_args.max_logprobs` raises it); a larger
    `top_k` with a vLLM scorer that does not raise it is refused."""
    divergence: Literal["auto", "forward_kl", "reverse_kl", "reverse_kl_sampled", "jsd"] = "auto"
    """The per-token divergence trained on (distill.training.divergences). `auto`: `forward_kl` for
    `word_level` (the teacher's own samples: its expectation), `reverse_kl` otherwise (the student's
    samples: the on-policy form, its exact expectation over the student's distribution at each
    position, computed over the stored top-k and the tail)."""
    jsd_beta: float = Field(default=0.5, ge=0.0, le=1.0)
    """The generalized Jensen-Shannon divergence's beta (`divergence: jsd`; GKD's, weighing the teacher)."""
    weight: float = Field(default=1.0, gt=0.0)
    """The divergence term's weight in the training loss: added to the supervised and DSS terms
    (`siked`, `word_level`), or the whole loss (`on_policy`)."""

    @property
    def score(self) -> bool:
        """Whether any step scores samples."""
        return self.use != "none"

    @property
    def trains(self) -> bool:
        """Whether a training reads the scores."""
        return self.use in ("on_policy", "siked", "word_level")

    def divergence_kind(self) -> str:
        """`divergence` with `auto` resolved for `use`."""
        if self.divergence != "auto":
            return self.divergence
        return "forward_kl" if self.use == "word_level" else "reverse_kl"

    def scored_iterations(self, iterations: int) -> list[int]:
        """The rounds whose samples are scored: the teacher round with `word_level`, else every
        self-generation round."""
        if not self.score:
            return []
        return [0] if self.use == "word_level" else list(range(1, iterations + 1))

    # The guards: checks on the scorer, run by the score step before it writes anything.
    guards: bool = execution_only(True)
    """Check the scorer before it scores (docs/method.md, "Guards"): its mean entropy against the
    uniform bound, two scoring passes agreeing, and its top-1 tokens agreeing with its own greedy
    samples. A failed check stops the run with the figures. Execution-only: a check decides whether
    the step goes on, never what it writes."""
    guard_samples: int = execution_only(4, ge=1)
    """Samples the guards score twice, and whose prompts the scorer generates from greedily (32 tokens
    each): the step's first samples, one per prompt while there are prompts enough."""


class DecontaminationConfig(Section):
    ngram: int = Field(default=13, ge=1)
    """Word n-gram length: an evaluation question sharing one with a training problem (or a prompt
    exemplar) is reported as overlapping (distill.decontamination)."""
    exemplars: bool = True
    """Also compare against the teacher's prompt exemplars."""
    drop: bool = False
    """Leave overlapping questions out of every evaluation (the report still lists them)."""


class SelfConsistencyConfig(Section):
    k: int = Field(default=8, ge=1)
    """Samples per question in the `sampled` evaluation mode (maj@k, pass@k)."""
    temperature: float = Field(default=0.7, gt=0.0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest set of tokens holding this much probability."""


class EvalConfig(Section):
    benchmarks: list[BenchmarkRef] = Field(default_factory=list)
    """The evaluation sets: each student (and the base model) is evaluated on every one, in every mode."""
    modes: list[Literal["rationale", "label", "forced_cot", "forced_l2m", "forced_pot", "sampled"]] = Field(
        default_factory=lambda: ["rationale", "label"])
    """`rationale`: the student picks a strategy and solves (SIKeD); `label`: the bare answer (DSS);
    `forced_cot`, `forced_l2m`, `forced_pot`: the rationale prompt primed with that strategy's tag
    (each strategy's accuracy, and with all three the any-strategy oracle in experiments);
    `sampled`: self-consistency, `self_consistency.k` rationale samples per question (maj@k, pass@k)."""
    self_consistency: SelfConsistencyConfig = Field(default_factory=SelfConsistencyConfig)
    max_tokens: int = Field(default=512, ge=1)
    """New tokens per answer in rationale mode."""
    label_max_tokens: int | Literal["auto"] = "auto"
    """New tokens per answer in label mode (the bare answer). `auto`: the longest gold label of the
    evaluated set, in the evaluated model's tokens, plus 8 (the end-of-sequence token and room for
    another spelling of the answer; `distill.label_budget`), so that no gold label is cut short (a
    fixed 16 cut 48 of DSS's 200 SVAMP test equations). A number fixes the budget; the step's log
    then counts the gold labels it cannot hold. Label-mode checkpoint selection (`train.select_on:
    label`) budgets its validation answers by the same setting and rule."""
    evaluate_base: bool = True
    """Also evaluate the untrained student, as the baseline of the report."""
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)

    @field_validator("label_max_tokens")
    @classmethod
    def _a_budget_is_positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"label_max_tokens must be at least 1 or 'auto', not {value}")
        return value

    @model_validator(mode="after")
    def _one_set_per_label(self) -> EvalConfig:
        # Steps and prediction files are named by the label: two sets under one label would be
        # merged into one, the first silently dropped.
        first: dict[str, int] = {}
        for position, ref in enumerate(self.benchmarks):
            label = ref.eval_label
            if label in first:
                raise ValueError(f"eval.benchmarks.{first[label]} and eval.benchmarks.{position} are both "
                                 f"evaluated as {label!r}; give one of them another `label`")
            first[label] = position
        return self


class RunConfig(Section):
    name: str = "siked"
    """Run name; the run folder is `<runs_root>/<name>-<config hash>`."""
    seed: int = 42
    """The run's seed. `train.seed` and `siked.engine.seed` (the student's training order, dropout,
    validation split and self-generation sampling) follow it unless set themselves; the teacher's
    `teacher.engine.seed` does not (default 0), so that the seeds of an experiment share one set of
    teacher data, as the papers' comparisons do. Set it too to resample the teacher per seed."""
    runs_root: str | None = None
    """Where runs are written (a path or fsspec URL); default `$SIKED_HOME/runs`."""
    data_dir: str | None = None
    """Folder with the original benchmark files; default `$SIKED_DATA_DIR`."""
    train_data: BenchmarkRef = Field(default_factory=lambda: BenchmarkRef(name="arith", split="train"))
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    siked: SikedConfig = Field(default_factory=SikedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    token_level: TokenLevelConfig = Field(default_factory=TokenLevelConfig)
    """The teacher's token-level signal on the student's samples (off by default)."""

    def scoring_engine(self) -> EngineConfig:
        """The engine settings of the `token_level` scorer: the teacher's, or the student's for the
        self-teacher (its `model` then replaced by the round's starting student)."""
        return self.teacher.engine if self.token_level.teacher == "separate" else self.siked.engine

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        if any(c in value for c in ": "):
            raise ValueError(f"run name {value!r} must be a plain folder name (no '/', ':', spaces)")
        return plain_name(value, "run name")

    @model_validator(mode="before")
    @classmethod
    def _student_seeds_follow_the_run_seed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        seed = data.get("seed", 42)
        data = dict(data)
        for section, inner in (("train", ()), ("siked", ("engine",))):
            node = data.get(section, {})
            if not isinstance(node, dict):
                continue
            node = dict(node)
            data[section] = node
            for name in inner:
                if not isinstance(node.get(name, {}), dict):
                    break
                node[name] = dict(node.get(name, {}))
                node = node[name]
            else:
                node.setdefault("seed", seed)
        return data

    @model_validator(mode="after")
    def _train_data_has_no_label(self) -> RunConfig:
        if self.train_data.label is not None:
            raise ValueError("train_data.label: only evaluation sets have labels (the training set is "
                             "problems/train)")
        return self

    @model_validator(mode="after")
    def _multiple_choice_trains_in_dss_format(self) -> RunConfig:
        if self.train_data.is_multiple_choice and self.train.format != "dss":
            raise ValueError(f"train_data {self.train_data.benchmark_name} is multiple choice: its label is the choice's text, which "
                             "the dss format trains (train.format=dss, train.select_on=label)")
        return self

    @model_validator(mode="after")
    def _dss_format_is_one_pass(self) -> RunConfig:
        if self.train.format == "dss" and self.siked.iterations > 0:
            raise ValueError("train.format=dss with siked.iterations > 0: a DSS-format student writes "
                             "rationales without answers, so none of its samples can be verified correct; "
                             "set siked.iterations=0 (one-pass distillation)")
        return self

    @model_validator(mode="after")
    def _a_scorer_can_score(self) -> RunConfig:
        level = self.token_level
        if level.use in ("on_policy", "siked", "record") and self.siked.iterations < 1:
            raise ValueError(f"token_level.use={level.use} scores the self-generation rounds, and "
                             "siked.iterations=0 has none; use token_level.use=word_level (the teacher "
                             "round) or set siked.iterations >= 1")
        if level.trains and self.train.format == "dss":
            raise ValueError(f"token_level.use={level.use} with train.format=dss: the scores are of "
                             "`[strategy]: solution` targets, which the dss format does not train")
        if not level.score:
            return self
        engine, where = self.scoring_engine(), ("teacher.engine" if self.token_level.teacher == "separate"
                                                 else "siked.engine")
        if engine.kind == "file":
            raise ValueError(f"token_level.teacher={self.token_level.teacher}: {where}.kind=file serves given "
                             "rationales and computes no log-probabilities; score with token_level.teacher=self "
                             "or a model engine")
        limit = int(engine.vllm_args.get("max_logprobs", 20))
        if engine.kind == "vllm" and self.token_level.top_k > limit:
            raise ValueError(f"token_level.top_k={self.token_level.top_k} is more than vLLM serves "
                             f"({where}.vllm_args.max_logprobs, {limit}); raise max_logprobs there or lower top_k")
        return self

    @model_validator(mode="after")
    def _alpha_schedule_needed(self) -> RunConfig:
        if self.siked.mixing == "alpha":
            bad = [a for a in self.siked.alpha_schedule if not 0.0 <= a <= 1.0]
            if not self.siked.alpha_schedule or bad:
                raise ValueError("siked.alpha_schedule must hold teacher fractions in [0, 1]")
        return self


# --------------------------------------------------------------------------- overrides


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        path = key.strip().split(".")
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = _override_value(item, raw)
    return data


def _override_value(item: str, raw: str) -> Any:
    """The value of the override `item` parsed as YAML (an empty value is the empty string)."""
    if not raw.strip():
        return ""
    try:
        return load_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {yaml_problem(exc)}") from None


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class that holds the key at `path` (None when the path leaves the schema)."""
    model: Any = RunConfig
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _explain(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc)
            known = list(owner.model_fields) if owner else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean {'.'.join(str(p) for p in loc[:-1] + (guess[0],))!r}?" if guess else ""
            lines.append(f"unknown key {dotted!r}{hint} (known here: {', '.join(known)})")
        else:
            got = repr(err.get("input"))  # a whole section when a check spans its keys: shortened
            lines.append(f"{dotted}: {err['msg']} (got {got if len(got) <= 200 else got[:200] + '...'})")
    return "; ".join(lines)


def load_config(text_or_data: str | dict[str, Any] | None = None, overrides: list[str] | None = None,
                source: str = "<config>") -> RunConfig:
    """Build a RunConfig from YAML text (or a dict) plus overrides; raise ConfigError on any problem."""
    if isinstance(text_or_data, str):
        try:
            data = load_yaml(text_or_data) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {yaml_problem(exc)}") from None
    else:
        data = dict(text_or_data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    data = apply_overrides(data, list(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        # One line, as every error the command line prints: the file, then each key and what is wrong.
        raise ConfigError(f"{source}: invalid configuration: {_explain(exc)}") from None


def section_hash(section: BaseModel | Any, length: int = 16) -> str:
    """Stable hash of a config section (or any JSON-able value) for cache keys."""
    value = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
