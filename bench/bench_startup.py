"""Where the quickstart's wall time goes, before and after warm start, in-process vLLM engines and
the engine worker.

    python bench/bench_startup.py                          # configs/quickstart.yaml, before, warm, after
    python bench/bench_startup.py --variants after --json  # one side only
    python bench/bench_startup.py CONFIG key=value ...     # another config

Each variant runs `siked run CONFIG` from scratch (a fresh runs root: nothing is reused; the models
folder of SIKED_HOME is shared) with `SIKED_TIMINGS` set, so every process of the run records its
spans (distill/timings.py):
- `before`: how steps started before warm start and in-process engines: `SIKED_WARM_START=0`
  (each step starts its process and imports torch, transformers and vLLM on its own time) and
  `engine.in_process=false` for the teacher and the students (vLLM's engine core in a process of
  its own, which imports vLLM and torch again);
- `warm`: a spare process imports the libraries while the step before works, and on CPU builds the
  engine core runs in the step's process, but every step starts its own engine
  (`SIKED_KEEP_ENGINE=0`);
- `after`: the defaults: as `warm`, and generation and evaluation steps run in the engine worker,
  which keeps its vLLM engine from step to step and loads each new student's weights into it.
The variants run one after the other on the same machine. `in_process` is left
out of step keys (it changes how a step runs, not what it writes), so both compute the same steps.

The wall time of each run is split into:
- process start & imports: the steps' waits for their process (spawn, interpreter, imports) and
  the engine's own `import vllm`;
- engine start & stop: `vllm.LLM(...)`, its shutdown, and a kept engine's swap of weights;
- generation, evaluation, training compute (the training loop), verification: the work;
- training setup & save: the rest of a training process (loading the model, merging and writing it);
- step set-up in children: the rest of a generation or evaluation process (reading problems,
  prompts, the sandbox pool, sending the result back);
- orchestration & the rest: everything outside child processes (Prefect, the flow's own steps,
  the report).

The start-up share is everything but the work (generation, evaluation, training compute and
verification) over the wall time. Figures go to BENCHMARKS.md, "Start-up".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = ("generation", "evaluation", "training compute", "verification")
ORDER = ("process start & imports", "engine start & stop", "generation", "evaluation", "training compute",
         "verification", "training setup & save", "step set-up in children", "orchestration & the rest")


def breakdown(spans: list[dict], wall: float) -> dict[str, float]:
    """Seconds per category (see the module docstring) from one run's spans. Child processes that
    trained (fn `run_job`) are training, not a generation or evaluation step's set-up."""
    total: dict[str, float] = defaultdict(float)
    training: dict[str, float] = defaultdict(float)
    for s in spans:
        total[s["span"]] += s["seconds"]
        if s.get("fn") == "run_job":
            training[s["span"]] += s["seconds"]
    parts = {
        "process start & imports": total["child_start_wait"] + total["engine_import"],
        "engine start & stop": total["engine_start"] + total["engine_close"] + total["engine_swap"],
        "generation": total["generate"],
        "evaluation": total["evaluate"],
        "training compute": total["train_loop"],
        "verification": total["verify"],
        "training setup & save": training["child"] - training["child_start_wait"] - total["train_loop"],
    }
    parts["step set-up in children"] = (total["child"] - training["child"]
                                        - (total["child_start_wait"] - training["child_start_wait"])
                                        - total["engine_import"] - parts["engine start & stop"]
                                        - total["generate"] - total["evaluate"])
    parts["orchestration & the rest"] = wall - total["child"] - total["verify"]
    return {k: round(parts[k], 1) for k in ORDER}


def accuracies(run_dir: Path) -> dict[str, float]:
    """Stage -> rationale accuracy on the first evaluation set, from the run's summaries."""
    found = {}
    for summary in sorted(run_dir.glob("*/summary.json")):
        data = json.loads(summary.read_text())
        rows = [r for r in data.get("eval", []) if r["mode"] == "rationale"]
        if rows:
            found[data.get("stage", summary.parent.name)] = round(rows[0]["accuracy"], 4)
    return found


VARIANTS = {
    "before": ({"SIKED_WARM_START": "0", "SIKED_KEEP_ENGINE": "0"},
               ["teacher.engine.in_process=false", "siked.engine.in_process=false"]),
    "warm": ({"SIKED_WARM_START": "1", "SIKED_KEEP_ENGINE": "0"}, []),
    "after": ({"SIKED_WARM_START": "1", "SIKED_KEEP_ENGINE": "1"}, []),
}


def run_variant(name: str, config: str, overrides: list[str], folder: Path) -> dict:
    timings = folder / f"timings-{name}.jsonl"
    settings, own = VARIANTS[name]
    env = {**os.environ, "SIKED_TIMINGS": str(timings), **settings}
    command = [sys.executable, "-m", "flows.cli", "run", config, f"runs_root={folder / ('runs-' + name)}",
               *overrides, *own]
    print(f"[bench] {name}: {' '.join(command[2:])}", file=sys.stderr, flush=True)
    started = time.time()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"[bench] {name}: siked run exited with {done.returncode}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    spans = [json.loads(line) for line in timings.read_text().splitlines() if line]
    parts = breakdown(spans, wall)
    startup = wall - sum(parts[k] for k in WORK)
    waits = [s for s in spans if s["span"] == "child_start_wait"]
    warm_starts = sum(1 for s in waits if s.get("warm"))
    cold_starts = len(waits) - warm_starts
    engines = {k: sum(1 for s in spans if s["span"] == k) for k in ("engine_start", "engine_swap")}
    return {"variant": name, "wall_s": round(wall, 1), "parts_s": parts, "startup_s": round(startup, 1),
            "startup_share": round(startup / wall, 4), "children_warm": warm_starts, "children_cold": cold_starts,
            "engines_started": engines["engine_start"], "engines_reused": engines["engine_swap"],
            "accuracy": accuracies(run_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--variants", default="before,warm,after",
                        help="comma-separated, run in that order: before, warm, after")
    parser.add_argument("--keep", default=None, help="folder for the runs and timings (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-startup-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = [run_variant(name, args.config, args.overrides, folder)
               for name in args.variants.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    names = [r["variant"] for r in results]
    print("| part | " + " | ".join(f"{n} (s)" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for part in ORDER:
        print(f"| {part} | " + " | ".join(f"{r['parts_s'][part]:.1f}" for r in results) + " |")
    print("| **wall** | " + " | ".join(f"{r['wall_s']:.1f}" for r in results) + " |")
    print("| start-up (all but the work) | " + " | ".join(
        f"{r['startup_s']:.1f} ({100 * r['startup_share']:.1f}%)" for r in results) + " |")
    for r in results:
        print(f"{r['variant']}: steps in a waiting process {r['children_warm']}, started cold {r['children_cold']}; "
              f"engines started {r['engines_started']}, reused {r['engines_reused']}; accuracy {r['accuracy']}")
    for r in results[1:]:
        print(f"{r['variant']} / {names[0]} wall: {r['wall_s'] / results[0]['wall_s']:.3f}; "
              f"start-up: {r['startup_s'] / results[0]['startup_s']:.3f}")
    print(f"Start-up share of the quickstart: {100 * results[-1]['startup_share']:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
