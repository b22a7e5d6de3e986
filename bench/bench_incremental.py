"""What a changed config costs once steps are shared: each change's wall time as a fraction of the
first run's, all in one runs root, one after another on one machine.

    python bench/bench_incremental.py --root DIR [CONFIG]      # default CONFIG: configs/quickstart.yaml

Phases (each a `siked run` as a user types it, in a child process, so imports and Prefect's
temporary server are paid as a user pays them):
1. `first`: the config as it is: T;
2. `extend`: `siked.iterations=3` (the quickstart has 2): goal <= 0.25 T;
3. `train_lr`: `train.lr=0.0005`: reported;
4. `eval_budget`: `eval.max_tokens=96`: goal <= 0.25 T;
5. `rerun`: the config as it is, again: goal <= 0.02 T.
Before each phase `siked plan --json` is read (its wall time recorded too: it checks the sha256 of
every output it would reuse, as the run does) and the steps it says run are recorded beside the time.

Resumable: results go to `DIR/bench_incremental.json` as each phase ends, and a rerun with the same
`--root` skips the phases already there (a phase killed mid-way is rerun from its artifacts, so its
time would be too short: delete DIR to measure again from scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = [("first", []), ("extend", ["siked.iterations=3"]), ("train_lr", ["train.lr=0.0005"]),
          ("eval_budget", ["eval.max_tokens=96"]), ("rerun", [])]
GOALS = {"extend": 0.25, "eval_budget": 0.25, "rerun": 0.02}


def siked(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], check=False, cwd=REPO, capture_output=True, text=True)


def planned(config: str, overrides: list[str]) -> list[str]:
    done = siked("plan", config, *overrides, "--json")
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return [row["step"] for row in json.loads(done.stdout) if row["action"] == "run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(REPO / "configs/quickstart.yaml"))
    parser.add_argument("--root", required=True, help="runs root for every phase (kept; resumable)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    results_file = root / "bench_incremental.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name, overrides in PHASES:
        if name in results:
            continue
        every = [f"runs_root={root}", *overrides]
        started = time.perf_counter()
        to_run = planned(args.config, every)
        plan_s = time.perf_counter() - started
        started = time.perf_counter()
        done = siked("run", args.config, *every)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{name}: siked run failed\n{done.stderr[-3000:]}")
        results[name] = {"overrides": overrides, "wall_s": round(wall, 1), "plan_s": round(plan_s, 1),
                         "planned_to_run": to_run,
                         "run_dir": done.stdout.strip().splitlines()[-1]}
        results_file.write_text(json.dumps(results, indent=2))
        print(f"{name:<12} {wall:8.1f} s  {len(to_run)} steps planned to run (plan {plan_s:.1f} s)", flush=True)
    first = results["first"]["wall_s"]
    print(f"\nfirst run T = {first:.1f} s ({os.cpu_count()} CPUs)")
    for name, _ in PHASES[1:]:
        ratio = results[name]["wall_s"] / first
        goal = f" (goal <= {GOALS[name]})" if name in GOALS else ""
        print(f"{name:<12} {ratio:.3f} T{goal}  plan {results[name].get('plan_s', float('nan')):.1f} s  "
              f"runs: {', '.join(results[name]['planned_to_run']) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
