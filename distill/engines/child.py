"""Run one function in a child process: how generation, evaluation and training run, so a crash in
native code costs only the step, and vLLM's memory (and its worker processes) go when the child ends.

    from distill.engines.child import run_in_child, run_in_engine_worker
    stats = run_in_child(generate_teacher_samples, cfg, out_dir)   # fn must be importable by name
    stats = run_in_engine_worker(generate_into, job)              # may reuse the last step's engine

The child is started with the spawn method (vLLM needs it; nothing of the parent's state is
inherited but the environment), leads a process group of its own, and returns `fn`'s result by
pickle. An exception in the child is raised again in the parent with the same type (when it can be
pickled), chained to the child's traceback. If the parent is interrupted (Ctrl-C, SIGTERM turned
into an exception, an error), the whole group, vLLM's engine and workers included, is terminated,
then killed; on Linux the group also ends if the parent is killed outright (the child gets a
parent-death SIGTERM and passes it to its group).

Warm start (`SIKED_WARM_START`, on by default): when a step takes its child, the next one is
spawned at once and imports the heavy libraries (`PRELOAD`: torch, transformers, peft, vLLM) while
this step works, then waits for its job; the next step finds a process ready instead of paying
process start and imports on its own time. A spare started under another environment than the
step's (CUDA_VISIBLE_DEVICES, ...) is discarded, not used. `SIKED_WARM_START=0` starts every child
cold, as before.

The engine worker (`SIKED_KEEP_ENGINE`, on by default): generation and evaluation steps go through
`run_in_engine_worker`. Their child stays after a step that went well if it holds a vLLM engine
(distill.engines.kept_engine: CPU builds, engine core in-process), and the next such step runs in
it: the same engine serves it, a new student's weights loaded in place, with what it samples
unchanged. A step that fails, or a worker that dies, costs that step only: the worker ends with it
and the next step starts in a fresh process. Every other child runs exactly one job and exits, so
its memory is returned and a step never sees another's state. `SIKED_KEEP_ENGINE=0` gives every
step a process of its own; BENCHMARKS.md, "Start-up", measures each setting.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from distill import timings
from distill.engines import kept_engine

_GRACE_S = 10.0


class ChildProcessDied(RuntimeError):
    """The child ended without an answer (killed, out of memory, a crash in native code)."""


class RemoteTraceback(Exception):
    """The child's traceback, attached as the cause of the error raised again in the parent."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nin the child process:\n{self.text}"


def run_in_child(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a spawned child; its result, or its exception raised here."""
    return _run(fn, args, kwargs, stay=False)


def run_in_engine_worker(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """As `run_in_child`, in the engine worker when one is waiting (`SIKED_KEEP_ENGINE`, module
    docstring): a child that stays after `fn` returns if it holds an engine the next step may use."""
    return _run(fn, args, kwargs, stay=keep_engine_enabled())


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict, stay: bool) -> Any:
    child = (_take_worker() if stay else None) or _take_spare() or _Child.start(preload=())
    dispatched = time.time()
    child.jobs.send((fn, args, kwargs, dispatched, stay))
    if not stay:
        child.jobs.close()
    if warm_start_enabled() and not child.served:
        _refill()  # the next step's process starts now: its imports overlap this step's work
    child.served += 1
    staying = False
    try:
        kind, payload, text, staying = _wait_for_answer(child.answers, child.process)
        if staying:
            _keep_worker(child)
        else:
            child.jobs.close()
            child.process.join()
    except BaseException:
        _end_group(child.process)
        raise
    finally:
        if not staying:
            child.answers.close()
        timings.record("child", dispatched, time.time(), fn=getattr(fn, "__name__", "fn"), warm=child.warm,
                       reused=child.served > 1)
    if kind == "ok":
        return payload
    if payload is not None:
        raise payload from RemoteTraceback(text)
    raise ChildProcessDied(f"the child raised an error that could not be sent back:{RemoteTraceback(text)}")


# --------------------------------------------------------------------------- warm start

WARM_START_ENV = "SIKED_WARM_START"
# What a spare imports while it waits: the libraries every generation, evaluation and training
# step imports first (about 15 s on a 2-core machine, vLLM's LLM class most of it).
PRELOAD = ("torch", "transformers", "peft", "vllm.entrypoints.llm")


KEEP_ENGINE_ENV = "SIKED_KEEP_ENGINE"


def keep_engine_enabled() -> bool:
    """Whether generation and evaluation steps run in an engine worker that keeps its vLLM engine
    (`SIKED_KEEP_ENGINE`, on unless `0`, `false` or `no`)."""
    return os.environ.get(KEEP_ENGINE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def warm_start_enabled() -> bool:
    """Whether a spare child is kept ready (`SIKED_WARM_START`, on unless `0`, `false` or `no`)."""
    return os.environ.get(WARM_START_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class _Child:
    """A spawned process waiting for one job on `jobs`, answering on `answers`."""

    def __init__(self, process, jobs, answers, environment: dict[str, str], warm: bool):
        self.process, self.jobs, self.answers = process, jobs, answers
        self.environment, self.warm = environment, warm
        self.served = 0  # jobs sent to it (more than one only for the engine worker)

    @classmethod
    def start(cls, preload: tuple[str, ...]) -> _Child:
        context = multiprocessing.get_context("spawn")
        job_reader, job_writer = context.Pipe(duplex=False)
        answer_reader, answer_writer = context.Pipe(duplex=False)
        # Not a daemon: vLLM starts processes of its own, which daemons may not.
        process = context.Process(target=_child_main, args=(job_reader, answer_writer, preload, time.time()),
                                  name="siked-child" + (":spare" if preload else ""))
        process.start()
        job_reader.close()
        answer_writer.close()
        return cls(process, job_writer, answer_reader, dict(os.environ), warm=bool(preload))

    def discard(self, wait_s: float = 0.0) -> None:
        """End the child. With `wait_s` (a worker that ran an engine), let it exit on its own first:
        it then releases its engine and unregisters its semaphores, which a signal would leave for
        multiprocessing's resource tracker to report as leaked when the command exits."""
        self.jobs.close()  # the child sees the end of its job pipe and exits
        self.answers.close()
        if wait_s:
            self.process.join(wait_s)
        _end_group(self.process)


_spare: _Child | None = None
_worker: _Child | None = None
_spare_lock = threading.Lock()
_exit_hook = False


def _usable(child: _Child | None) -> _Child | None:
    """`child` if it is alive and was started with this very environment (steps set
    CUDA_VISIBLE_DEVICES and the like, which libraries read when they load); else None (and it ends)."""
    if child is None:
        return None
    if child.process.is_alive() and child.environment == dict(os.environ):
        return child
    child.discard()
    return None


def _take_spare() -> _Child | None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    return _usable(spare)


def _take_worker() -> _Child | None:
    global _worker
    with _spare_lock:
        worker, _worker = _worker, None
    return _usable(worker)


def _keep_worker(child: _Child) -> None:
    """`child` waits for the next engine step (one worker at a time: another one ends)."""
    global _worker
    with _spare_lock:
        child, _worker = (child, None) if _worker is not None else (None, child)
        _register_exit_hook()
    if child is not None:
        child.discard(wait_s=_GRACE_S)


def _refill() -> None:
    global _spare
    with _spare_lock:
        if _spare is None:
            _spare = _Child.start(PRELOAD)
        _register_exit_hook()


def _register_exit_hook() -> None:
    global _exit_hook
    if not _exit_hook:
        # Registered after multiprocessing's own exit hook (imported with the first process it
        # started), so that it runs first: that hook joins every child, and a waiting one waits forever.
        atexit.register(discard_waiting)
        _exit_hook = True


def discard_spare() -> None:
    """End the waiting spare."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.discard()


def discard_waiting() -> None:
    """End the waiting spare and the engine worker (at exit, or when no step will follow)."""
    global _worker
    discard_spare()
    with _spare_lock:
        worker, _worker = _worker, None
    if worker is not None:
        worker.discard(wait_s=_GRACE_S)


def _wait_for_answer(receiver, child) -> tuple[str, Any, str]:
    while not receiver.poll(0.5):
        if not child.is_alive() and not receiver.poll(0):
            raise ChildProcessDied(f"child process {child.pid} ended with exit code {child.exitcode} "
                                   "and no answer (killed? out of memory?)")
    try:
        return receiver.recv()
    except EOFError:
        child.join()
        raise ChildProcessDied(f"child process {child.pid} ended with exit code {child.exitcode} "
                               "while sending its answer") from None


def _child_main(jobs, sender, preload: tuple[str, ...], spawned: float) -> None:
    os.setpgid(0, 0)  # a group of our own: the parent ends vLLM's processes with us
    _die_with_parent()
    # From the parent's start() to here: process start, interpreter, the parent's main module.
    timings.record("child_boot", spawned, time.time())
    if preload:
        with timings.span("child_preload"):
            for module in preload:
                try:
                    if importlib.util.find_spec(module.split(".")[0]) is not None:
                        importlib.import_module(module)
                except Exception:  # noqa: BLE001 - the step imports it again and reports what is wrong
                    break
    served = 0
    try:
        while _serve_one(jobs, sender, warm=bool(preload) or served > 0):
            served += 1
    finally:
        jobs.close()
        sender.close()
        kept_engine.release()
        sys.stdout.flush()
        sys.stderr.flush()


def _serve_one(jobs, sender, warm: bool) -> bool:
    """Run one job and answer it; whether to wait for another (an engine worker holding an engine)."""
    try:
        fn, args, kwargs, dispatched, stay = jobs.recv()
    except EOFError:  # discarded: the parent closed the job pipe
        return False
    except BaseException as exc:  # noqa: BLE001 - the job could not be unpickled (its module failed to import)
        sender.send(("error", None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", False))
        return False
    # The step's wait for its process: none for a spare that was ready, all of its start for a cold one.
    timings.record("child_start_wait", dispatched, time.time(), fn=getattr(fn, "__name__", "fn"), warm=warm)
    if stay:
        kept_engine.keep_engines(True)
    try:
        answer: tuple[str, Any, str] = ("ok", fn(*args, **kwargs), "")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
        except (pickle.PicklingError, TypeError, AttributeError):
            exc = None
        answer = ("error", exc, text)
    # A worker stays only for a step that went well and left an engine to reuse: nothing else of a
    # step is worth a process that waits (and, on GPUs, no engine is kept: memory goes back).
    staying = stay and answer[0] == "ok" and kept_engine.holding()
    try:
        sender.send((*answer, staying))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable result
        sender.send(("error", TypeError(f"the result of {fn!r} cannot be sent back: {exc}"),
                     traceback.format_exc(), False))
        return False
    return staying


def _die_with_parent() -> None:
    """Linux: SIGTERM when the parent dies, even by SIGKILL (a no-op elsewhere); a SIGTERM ends the
    whole group, so vLLM's engine and workers, which would outlive a child that merely exits, go too."""
    signal.signal(signal.SIGTERM, _terminate_group)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _terminate_group(signum, frame) -> None:
    """SIGTERM to every process of our group, this one included (with the default action restored, so
    it ends here). The others get their own shutdown; the parent, if alive, SIGKILLs any straggler."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGTERM)


def _end_group(child) -> None:
    """SIGTERM to the child's process group, then SIGKILL to whatever is left of it after a grace period."""

    def signal_group(sig: int) -> None:
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:  # no such group (the child has not called setpgid yet, or all exited)
            if child.exitcode is None:
                try:
                    os.kill(child.pid, sig)
                except ProcessLookupError:
                    pass

    signal_group(signal.SIGTERM)
    child.join(_GRACE_S)
    signal_group(signal.SIGKILL)
    child.join()
