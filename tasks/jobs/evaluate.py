"""The evaluation step's job and its child-process body.

One child process holds one engine for all (benchmark, mode) pairs of a model; each pair is its own
PREDICTIONS artifact, written as soon as it is done, so a rerun evaluates only the missing pairs.
The summary (accuracy, strategy histogram, failure shares, protocol) sits beside each artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill import timings
from distill.config import EngineConfig, SamplingConfig, SelfConsistencyConfig, VerifyConfig
from storage.artifacts import is_complete, with_manifests
from storage.fs import exists, write_json
from tasks.compute import Stopwatch, cost
from tasks.pipeline import prediction_kind, summary_url_of


@dataclass(frozen=True)
class EvalJob:
    model: str  # model spec or folder
    engine: EngineConfig
    verify: VerifyConfig
    max_tokens: int
    # (benchmark name, problems artifact URL, mode, predictions output URL)
    targets: tuple[tuple[str, str, str, str], ...]
    key: str
    label: str  # e.g. "base" or "iter-01", for names in the UI
    label_max_tokens: int | str = "auto"  # `auto`: from each set's gold labels (distill.label_budget)
    extra: dict = field(default_factory=dict)
    exclude_url: str | None = None  # OVERLAPS of questions to leave out (eval.decontamination.drop)
    self_consistency: SelfConsistencyConfig | None = None  # the `sampled` mode's k and temperature


summary_url = summary_url_of


def pending_targets(job: EvalJob) -> list[tuple[str, str, str, str]]:
    return [t for t in job.targets
            if not (is_complete(t[3], kind=prediction_kind(t[2]), config_hash=job.key) and exists(summary_url(t[3])))]


def sampled_settings(job: EvalJob) -> SamplingConfig:
    sc = job.self_consistency or SelfConsistencyConfig()
    return SamplingConfig(n=sc.k, temperature=sc.temperature, top_p=sc.top_p, max_tokens=job.max_tokens,
                          stop=["### Instruction"])


def label_max_tokens(job: EvalJob, problems: list[dict], benchmark: str, count_tokens) -> int:
    """The label-mode budget of one set (`eval.label_max_tokens`, `auto` resolved from its gold
    labels in the model's tokens); a set budget too small for some gold labels is said once."""
    from distill.label_budget import label_budget, label_lengths, shortfall_warning

    lengths = label_lengths(problems, count_tokens)
    budget = label_budget(job.label_max_tokens, lengths)
    warning = shortfall_warning(job.label_max_tokens, lengths, benchmark)
    if warning:
        print(f"eval {job.label}: warning: {warning}", flush=True)
    print(f"eval {job.label}: {benchmark} label budget {budget} tokens (longest gold label "
          f"{max(lengths, default=0)})", flush=True)
    return budget


class TokenCounter:
    """An engine that counts the completion tokens it produces, for the predictions' manifests
    (PREDICTIONS rows keep no token counts); everything else is the engine's own."""

    def __init__(self, engine):
        self.engine, self.tokens = engine, 0

    def generate(self, requests, sampling, **options):
        outputs = self.engine.generate(requests, sampling, **options)
        self.tokens += sum(c.completion_tokens for completions in outputs for c in completions)
        return outputs

    def take(self) -> int:
        """The tokens produced since the last take."""
        tokens, self.tokens = self.tokens, 0
        return tokens

    def __getattr__(self, name):
        return getattr(self.engine, name)


def evaluate_into(job: EvalJob) -> None:
    """Child-process body: evaluate the pending (benchmark, mode) pairs and write each one."""
    from distill.engines import make_engine
    from distill.evaluation import evaluate, summarize_predictions, summarize_sampled
    from distill.label_budget import model_token_counter
    from distill.models import resolve_model
    from distill.sandbox import SandboxPool
    from distill.verify import sandbox_limits
    from storage.artifacts import read_artifact, write_artifact
    from storage.mirror import local_model
    from storage.paths import models_dir

    watch = Stopwatch()  # each pair's manifest gets the seconds since the previous one was written
    pending = pending_targets(job)
    model_path = resolve_model(local_model(job.model), models_dir())  # a remote student is mirrored
    count_tokens = None
    engine = TokenCounter(make_engine(job.engine, model_path))
    limits = sandbox_limits(job.verify)
    excluded = set()
    if job.exclude_url:
        overlaps = read_artifact(job.exclude_url, "overlaps", columns=["benchmark", "question_id"]).to_pylist()
        excluded = {(o["benchmark"], o["question_id"]) for o in overlaps}
    try:
        with SandboxPool(limits, job.verify.workers) as pool, timings.span("evaluate", stage=job.label):
            for benchmark, problems_url, mode, output in pending:
                problems = [p for p in read_artifact(problems_url, "problems").to_pylist()
                            if (benchmark, p["id"]) not in excluded]
                max_tokens = job.max_tokens
                if mode == "label":
                    count_tokens = count_tokens or model_token_counter(model_path)
                    max_tokens = label_max_tokens(job, problems, benchmark, count_tokens)
                rel_tol = job.verify.rel_tol
                rows = evaluate(engine, problems, benchmark, mode, max_tokens, job.model, sandbox=pool,
                                rel_tol=rel_tol, sampling=sampled_settings(job) if mode == "sampled" else None)
                summary = summarize_sampled(rows, rel_tol) if mode == "sampled" else summarize_predictions(rows)
                write_json(summary_url(output), summary)
                parents = with_manifests(problems_url, job.exclude_url, job.model)  # the model too
                write_artifact(output, rows, prediction_kind(mode), config_hash=job.key, parents=parents,
                               info=cost(watch, tokens_generated=engine.take()))
                print(f"eval {job.label}: {benchmark} {mode} accuracy {summary['accuracy']:.3f} "
                      f"({len(rows)} problems)", flush=True)
    finally:
        engine.close()
