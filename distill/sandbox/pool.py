"""SandboxPool: pre-warmed worker processes (server.py) that run PoT programs in parallel.

    from distill.sandbox import SandboxLimits, SandboxPool
    with SandboxPool(SandboxLimits(timeout_s=5), workers=2) as pool:
        results = pool.run_many(programs)          # list[SandboxResult], in input order

A program costs a fork of a worker, not an interpreter start. Each of the `workers` slots runs one
program at a time, in one of two worker processes: a light one (little more than `math` loaded: a
fork of a small process is cheapest) for programs that import nothing else, and a full one (sympy and
the usual stdlib modules imported once, started on first need) for the rest. A worker that dies or
stops answering is replaced, its program gets a verdict, and the pool keeps serving.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Self

from distill.sandbox import wire
from distill.sandbox.limits import SandboxLimits, SandboxResult

# The worker runs in a fresh interpreter: isolated mode without site (-I -S: no PYTHON* variables,
# no .pth hooks, no current folder on sys.path; the pool hands over its own sys.path) and an empty
# environment, so nothing of the pipeline's environment (tokens, keys) exists in it or in the
# programs it forks.
_BOOTSTRAP = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
              "from distill.sandbox.server import main; main(sys.argv[2])")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_START_TIMEOUT_S = 180.0  # importing sympy on a busy machine
_GRACE_S = 60.0  # beyond a program's timeout before its worker counts as hung (cleanup included)
_IMPORT_RE = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([^\n#;]+))", re.MULTILINE)


def imported_modules(code: str) -> set[str]:
    """Top-level names of the modules `code` imports by statement, e.g. {"math", "sympy"}."""
    names = set()
    for source, listed in _IMPORT_RE.findall(code):
        for item in [source] if source else listed.replace("(", " ").split(","):
            names.add(item.strip().split(" ")[0].split(".")[0])
    names.discard("")
    return names


class _WorkerProcess:
    """The pool's handle on one worker process."""

    def __init__(self, kind: str, limits: SandboxLimits, tmp_root: str):
        self.kind = kind
        # The worker's folder (programs' folders go inside). Named here, so that it can be removed
        # here too when the worker dies without removing it itself.
        self.folder = os.path.join(os.path.realpath(tmp_root), f"siked-sandbox-{os.urandom(8).hex()}")
        config = json.dumps({"kind": kind, "limits": vars(limits), "folder": self.folder,
                             "installation": _installation_dirs()})
        path = json.dumps([_PACKAGE_ROOT] + [p for p in sys.path if p and os.path.isdir(p)])
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, path, config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={}, cwd=tmp_root, close_fds=True,
            start_new_session=True)
        self.fd_in, self.fd_out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.ready: dict | None = None

    def wait_ready(self) -> _WorkerProcess:
        if self.ready is not None:
            return self
        if not _readable(self.fd_out, _START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"sandbox worker did not start within {_START_TIMEOUT_S:g} s")
        message = wire.receive(self.fd_out)
        if not message or not message.get("ready"):
            self.kill()
            why = message.get("error") if message else f"exited with status {self.proc.wait()}"
            raise RuntimeError(f"sandbox worker ({self.kind}) failed to start: {why}")
        self.ready = message
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)  # gone already after a clean exit

    def close(self, wait_s: float = 10.0) -> None:
        try:
            self.proc.stdin.close()  # end of requests: the worker removes its folder and exits
            self.proc.wait(wait_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _installation_dirs() -> list[str]:
    """The Python installation's folders as this process sees them (with `site`: a virtual
    environment's site-packages, the user site), which programs may read."""
    import site
    import sysconfig

    dirs = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def _readable(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(timeout_s, 0) * 1000))


def _shutdown(slots: list[dict]) -> None:
    for slot in slots:
        for worker in slot.values():
            worker.kill()


class SandboxPool:
    """`workers` programs at a time under one set of limits. Thread-safe (calls are serialised)."""

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 2):
        if not sys.platform.startswith("linux"):
            raise RuntimeError("the PoT sandbox needs Linux (process groups, rlimits, Landlock, pidfd)")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.limits = limits or SandboxLimits()
        self._tmp_root = tempfile.gettempdir()
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._slots: list[dict[str, _WorkerProcess]] = [{} for _ in range(workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self._slots)
        try:
            for slot in self._slots:
                self._worker(slot, "light")
            light = self._slots[0]["light"].ready
        except BaseException:
            self.close()
            raise
        self._light_modules = frozenset(light["modules"])
        self.isolation: dict = light["isolation"]
        """Which isolation layers are active (user, landlock_abi, network_namespace, audit_hook, ...)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for slot in self._slots:
                for worker in slot.values():
                    worker.close()
                slot.clear()
            self._finalizer.detach()

    def run(self, code: str) -> SandboxResult:
        return self.run_many([code])[0]

    def run_many(self, codes: list[str]) -> list[SandboxResult]:
        """Run every program, `workers` at a time; results in input order."""
        if os.getpid() != self._owner:
            raise RuntimeError("a SandboxPool cannot be used from a forked copy of its process")
        with self._lock:
            if not self._slots[0]:
                raise RuntimeError("the SandboxPool is closed")
            return self._dispatch(list(codes))

    def kind_for(self, code: str) -> str:
        """"light" when every module `code` imports is loaded in a light worker, else "full" (also for
        imports by function call: a program's process may be unable to read the Python installation)."""
        if "__import__" in code or "importlib" in code:
            return "full"
        return "light" if imported_modules(code) <= self._light_modules else "full"

    def _worker(self, slot: dict[str, _WorkerProcess], kind: str) -> _WorkerProcess:
        """The slot's worker of this kind, ready. A kind's first use starts it in every slot at once
        (they import in parallel); RuntimeError if it cannot start."""
        if kind not in slot:
            for other in self._slots:
                if kind not in other:
                    other[kind] = _WorkerProcess(kind, self.limits, self._tmp_root)
        try:
            return slot[kind].wait_ready()
        except RuntimeError:
            del slot[kind]
            raise

    def _dispatch(self, codes: list) -> list[SandboxResult]:
        results: list[SandboxResult | None] = [None] * len(codes)
        todo = deque()
        for index, code in enumerate(codes):
            if isinstance(code, str):
                todo.append(index)
            else:
                results[index] = SandboxResult(None, "bad_format", f"not program text: {type(code).__name__}")
        idle = list(self._slots)
        busy: dict[int, tuple[dict, _WorkerProcess, int, float]] = {}  # fd -> (slot, worker, index, deadline)
        poller = select.poll()
        try:
            while todo or busy:
                while idle and todo:
                    slot, index = idle.pop(), todo.popleft()
                    try:
                        worker = self._worker(slot, self.kind_for(codes[index]))
                    except RuntimeError as exc:
                        results[index] = SandboxResult(None, "exec_error", str(exc)[:500])
                        idle.append(slot)
                        continue
                    try:
                        wire.send(worker.fd_in, {"code": codes[index]})
                    except OSError:  # died while idle: replace it and try the program again
                        self._replace(slot, worker)
                        todo.appendleft(index)
                        idle.append(slot)
                        continue
                    deadline = time.monotonic() + self.limits.timeout_s + _GRACE_S
                    busy[worker.fd_out] = (slot, worker, index, deadline)
                    poller.register(worker.fd_out, select.POLLIN)
                if busy:
                    self._collect(busy, poller, results, idle)
        except BaseException:
            # Interrupted with programs in flight: their answers would arrive as answers to the next
            # call's programs. Replace those workers instead.
            for slot, worker, _, _ in busy.values():
                self._replace(slot, worker)
            raise
        return results  # type: ignore[return-value]

    def _collect(self, busy: dict, poller, results: list, idle: list) -> None:
        """Wait for the next answers (or deadlines); free their slots."""
        wait_s = min(deadline for *_, deadline in busy.values()) - time.monotonic()
        for fd, _ in poller.poll(max(wait_s, 0) * 1000):
            slot, worker, index, _ = busy[fd]
            message = wire.receive(fd)
            del busy[fd]  # only now: interrupted before, the worker is still listed as busy
            poller.unregister(fd)
            if message is None:
                results[index] = SandboxResult(None, "exec_error", "the sandbox worker died")
                self._replace(slot, worker)
            else:
                results[index] = SandboxResult(**message)
            idle.append(slot)
        now = time.monotonic()
        for fd, (slot, worker, index, deadline) in list(busy.items()):
            if now >= deadline:
                del busy[fd]
                poller.unregister(fd)
                results[index] = SandboxResult(None, "timeout", "the sandbox worker stopped answering")
                self._replace(slot, worker)
                idle.append(slot)

    def _replace(self, slot: dict[str, _WorkerProcess], worker: _WorkerProcess) -> None:
        """Kill a worker and start its successor (waited for at its first use)."""
        worker.kill()
        slot[worker.kind] = _WorkerProcess(worker.kind, self.limits, self._tmp_root)


def run_program(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one program in a pool of its own (starting a worker takes a moment, a second or two with
    sympy: for many programs, keep a SandboxPool open)."""
    with SandboxPool(limits or SandboxLimits(), workers=1) as pool:
        return pool.run(code)
