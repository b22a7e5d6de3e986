"""`run_in_child`: results and errors come back, a dead child is reported, and an interrupted parent
takes the child and the child's own processes down with it.

    pytest tests/test_engines_child.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distill.engines.child import ChildProcessDied, RemoteTraceback, run_in_child

REPO_ROOT = Path(__file__).resolve().parents[1]


def add(a, b, scale=1):
    return {"sum": (a + b) * scale, "pid": os.getpid()}


def fail(message):
    raise ValueError(message)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def test_result_comes_back_from_another_process():
    result = run_in_child(add, 2, 3, scale=10)
    assert result["sum"] == 50
    assert result["pid"] != os.getpid()


def test_error_is_raised_again_with_the_child_traceback():
    with pytest.raises(ValueError, match="broken on purpose") as caught:
        run_in_child(fail, "broken on purpose")
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail" in cause.text and "raise ValueError(message)" in cause.text


def test_a_killed_child_is_reported():
    with pytest.raises(ChildProcessDied, match="exit code -9"):
        run_in_child(die)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _parent_running_a_child(tmp_path, **popen) -> tuple[subprocess.Popen, int, int]:
    """A parent process whose `run_in_child` child started a worker of its own: (parent, child pid,
    worker pid), once the child has reported both."""
    pids = tmp_path / "pids"
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT; the parent installs the handler a terminal would give it.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from distill.engines.child import run_in_child
        from tests.test_engines_child import sleep_with_a_worker
        run_in_child(sleep_with_a_worker, {str(pids)!r})
    """)], **popen)
    deadline = time.monotonic() + 120
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids.exists(), "the child never started"
    child, worker = (int(x) for x in pids.read_text().split())
    return parent, child, worker


def _wait_until_gone(pids: tuple[int, ...], seconds: float = 30) -> list[int]:
    """The pids still alive after waiting up to `seconds` for all of them to end."""
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("warm", ["0", "1"])
def test_interrupting_the_parent_ends_the_child_and_its_processes(tmp_path, warm):
    """With warm start, the spare started beside the child goes too (multiprocessing's exit hook
    joins every child: a spare left waiting for a job once hung the parent here)."""
    parent, child, worker = _parent_running_a_child(tmp_path, stderr=subprocess.PIPE,
                                                    env={**os.environ, "SIKED_WARM_START": warm})
    everything = tuple(_descendants(parent.pid))
    assert len(everything) >= (3 if warm == "1" else 2)  # child, worker, [spare,] resource tracker
    try:
        parent.send_signal(signal.SIGINT)
        parent.wait(timeout=180)  # a loaded machine is slow to unwind; the grace period is 10 s
    except BaseException:
        for pid in (parent.pid, child, worker):  # nothing outlives a failed test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        raise
    assert b"KeyboardInterrupt" in parent.stderr.read()
    assert not _wait_until_gone((child, worker, *everything))


@pytest.mark.parametrize("warm", ["0", "1"])
def test_killing_the_parent_outright_ends_the_child_and_its_processes(tmp_path, warm):
    """SIGKILL leaves the parent no chance to clean up: the child (and the spare) learn of it by
    their parent-death signal and must take their own processes (vLLM's engine and workers) down."""
    parent, child, worker = _parent_running_a_child(tmp_path, env={**os.environ, "SIKED_WARM_START": warm})
    everything = tuple(_descendants(parent.pid))
    parent.kill()
    parent.wait()
    survivors = _wait_until_gone((child, worker, *everything))
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors


def sleep_with_a_worker(pids_file: str) -> None:
    """Start a process of our own (as vLLM starts its engine), report both pids, then wait."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    tmp = pids_file + ".tmp"
    Path(tmp).write_text(f"{os.getpid()} {worker.pid}")
    os.replace(tmp, pids_file)
    time.sleep(600)


def _spans(path: Path, name: str) -> list[dict]:
    import json

    return [r for r in map(json.loads, path.read_text().splitlines()) if r["span"] == name]


def test_with_warm_start_the_next_step_runs_in_a_process_started_beforehand(tmp_path, monkeypatch):
    from distill.engines import child as child_module

    monkeypatch.setenv("SIKED_WARM_START", "1")
    monkeypatch.setenv("SIKED_TIMINGS", str(tmp_path / "timings.jsonl"))
    monkeypatch.setattr(child_module, "PRELOAD", ("json",))  # the mechanism, without torch's import time
    try:
        first = run_in_child(add, 1, 2)
        spare = child_module._spare.process.pid
        second = run_in_child(add, 3, 4)
        third_spare = child_module._spare.process.pid
    finally:
        child_module.discard_spare()
    assert (first["sum"], second["sum"]) == (3, 7)
    assert second["pid"] == spare != first["pid"]  # one job per process, the second one already there
    assert [s["warm"] for s in _spans(tmp_path / "timings.jsonl", "child_start_wait")] == [False, True]
    assert len(_spans(tmp_path / "timings.jsonl", "child_preload")) >= 1
    assert not _wait_until_gone((spare, third_spare))  # a finished job's process exits; discard ends the spare


def test_a_spare_started_under_another_environment_is_not_used(tmp_path, monkeypatch):
    from distill.engines import child as child_module

    monkeypatch.setenv("SIKED_WARM_START", "1")
    monkeypatch.setattr(child_module, "PRELOAD", ("json",))
    try:
        run_in_child(add, 1, 2)
        spare = child_module._spare.process.pid
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # as a step placed on another device sets it
        result = run_in_child(add, 3, 4)
    finally:
        child_module.discard_spare()
    assert result["pid"] != spare
    assert not _wait_until_gone((spare,))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_command_whose_worker_kept_an_engine_exits_without_leaks(tmp_path, tiny_vllm_model_path):
    """The engine worker is let to exit on its own (it releases its engine and unregisters its
    semaphores) before its process group is signalled: no resource-tracker warning at exit, and the
    last line on stdout is the run folder."""
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "flows.cli", "eval", str(tiny_vllm_model_path), f"runs_root={tmp_path / 'runs'}",
               "eval.benchmarks=[{name: arith, split: test, size: 2}]", "eval.modes=[label]",
               "siked.engine.dtype=float32", "siked.engine.max_model_len=1024",
               "siked.engine.vllm_args={kv_cache_memory_bytes: 67108864}"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "SIKED_KEEP_ENGINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaked" not in done.stderr, done.stderr[-2000:]
    assert Path(done.stdout.strip().splitlines()[-1]).is_dir()
