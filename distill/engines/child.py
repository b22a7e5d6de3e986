"""Run one function in a fresh child process: how generation runs, so vLLM's memory (and its worker
processes) are gone when the step ends.

    from distill.engines.child import run_in_child
    stats = run_in_child(generate_teacher_samples, cfg, out_dir)   # fn must be importable by name

The child is started with the spawn method (vLLM needs it; nothing of the parent's state is
inherited but the environment), leads a process group of its own, and returns `fn`'s result by
pickle. An exception in the child is raised again in the parent with the same type (when it can be
pickled), chained to the child's traceback. If the parent is interrupted (Ctrl-C, SIGTERM turned
into an exception, an error), the whole group, vLLM's engine and workers included, is terminated,
then killed; on Linux the group also ends if the parent is killed outright (the child gets a
parent-death SIGTERM and passes it to its group).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

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
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    # Not a daemon: vLLM starts processes of its own, which daemons may not.
    child = context.Process(target=_child_main, args=(sender, fn, args, kwargs),
                            name=f"siked-child:{getattr(fn, '__name__', 'fn')}")
    child.start()
    sender.close()
    try:
        answer = _wait_for_answer(receiver, child)
        child.join()
    except BaseException:
        _end_group(child)
        raise
    finally:
        receiver.close()
    kind, payload, text = answer
    if kind == "ok":
        return payload
    if payload is not None:
        raise payload from RemoteTraceback(text)
    raise ChildProcessDied(f"the child raised an error that could not be sent back:{RemoteTraceback(text)}")


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


def _child_main(sender, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    os.setpgid(0, 0)  # a group of our own: the parent ends vLLM's processes with us
    _die_with_parent()
    try:
        answer: tuple[str, Any, str] = ("ok", fn(*args, **kwargs), "")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
        except (pickle.PicklingError, TypeError, AttributeError):
            exc = None
        answer = ("error", exc, text)
    try:
        sender.send(answer)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable result
        sender.send(("error", TypeError(f"the result of {fn!r} cannot be sent back: {exc}"),
                     traceback.format_exc()))
    finally:
        sender.close()
    sys.stdout.flush()
    sys.stderr.flush()


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
