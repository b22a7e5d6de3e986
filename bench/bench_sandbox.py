"""Throughput of the PoT sandbox: trivial programs through a SandboxPool vs one fresh `python` per program.

    python bench/bench_sandbox.py [--programs 400] [--workers 2] [--baseline-programs 100]

Both sides run `--workers` programs at a time. The baseline is the cheapest possible "fresh
interpreter" runner: `python -I -c <exec the program, print answer>`, no isolation at all. A second
baseline also imports sympy per program, as a fresh interpreter must to offer what the pool's workers
preload. Prints both rates, the ratio and the CPU time per program (all processes involved).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from distill.sandbox import SandboxLimits, SandboxPool

BASELINE = "import sys; ns = {}; exec(sys.stdin.read(), ns); print(float(ns['answer']))"
BASELINE_SYMPY = "import sympy; " + BASELINE


def trivial_programs(n: int) -> list[str]:
    """GSM8K-style straight-line PoT programs, each distinct."""
    return [f"apples = {i}\nbought = {i % 7 + 1} * 3\nanswer = apples + bought - 2" for i in range(n)]


def expected(i: int) -> float:
    return float(i + (i % 7 + 1) * 3 - 2)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _children_cpu() -> float:
    """CPU seconds of this process's live children (the pool's workers) and of the children they reaped
    (the programs), from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (ticks)
    return total / os.sysconf("SC_CLK_TCK")


def bench_pool(programs: list[str], workers: int) -> dict:
    with SandboxPool(SandboxLimits(), workers=workers) as pool:
        pool.run_many(programs[: 4 * workers])  # warm
        cpu0, pool_cpu0, start = _cpu_seconds(), _children_cpu(), time.perf_counter()
        results = pool.run_many(programs)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0 + _children_cpu() - pool_cpu0
        isolation = pool.isolation
    assert all(r.verdict == "ok" and r.answer == expected(i) for i, r in enumerate(results)), results[:3]
    return {"programs": len(programs), "seconds": seconds, "per_second": len(programs) / seconds,
            "cpu_ms_per_program": 1000 * cpu / len(programs), "isolation": isolation}


def bench_fresh(programs: list[str], workers: int, wrapper: str) -> dict:
    def run(i: int) -> float:
        done = subprocess.run([sys.executable, "-I", "-c", wrapper], input=programs[i], capture_output=True,
                              text=True, check=True, timeout=60)
        return float(done.stdout)

    with ThreadPoolExecutor(workers) as executor:
        list(executor.map(run, range(min(workers, len(programs)))))  # warm the page cache
        cpu0, start = _cpu_seconds(), time.perf_counter()
        answers = list(executor.map(run, range(len(programs))))
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
    assert answers == [expected(i) for i in range(len(programs))]
    return {"programs": len(programs), "seconds": seconds, "per_second": len(programs) / seconds,
            "cpu_ms_per_program": 1000 * cpu / len(programs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=400)
    parser.add_argument("--baseline-programs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    pool = bench_pool(trivial_programs(args.programs), args.workers)
    fresh = bench_fresh(trivial_programs(args.baseline_programs), args.workers, BASELINE)
    fresh_sympy = bench_fresh(trivial_programs(max(args.baseline_programs // 10, 2 * args.workers)),
                              args.workers, BASELINE_SYMPY)
    report = {"cores": os.cpu_count(), "load_average": os.getloadavg(), "workers": args.workers, "pool": pool,
              "fresh_python": fresh, "fresh_python_with_sympy": fresh_sympy,
              "speedup": pool["per_second"] / fresh["per_second"],
              "speedup_vs_sympy": pool["per_second"] / fresh_sympy["per_second"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['cores']} cores, load average {report['load_average'][0]:.1f}; "
          f"{args.workers} programs at a time; sandbox layers: {pool['isolation']}")
    for name, row in (("SandboxPool", pool), ("fresh python", fresh), ("fresh python + sympy", fresh_sympy)):
        print(f"{name:<22} {row['per_second']:8.1f} programs/s  ({row['programs']} in {row['seconds']:.2f} s, "
              f"{row['cpu_ms_per_program']:.1f} ms CPU per program)")
    print(f"speedup: {report['speedup']:.1f}x over fresh python, {report['speedup_vs_sympy']:.0f}x over fresh "
          f"python + sympy")


if __name__ == "__main__":
    main()
