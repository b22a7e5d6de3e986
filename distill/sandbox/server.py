"""A sandbox worker: a long-lived process with modules already imported that forks one child per program.

SandboxPool starts it as `python -I -S -c <bootstrap> <sys.path JSON> <config JSON>` with an empty
environment and talks to it over its stdin / stdout (wire.py): a ready message, then {"code": ...}
requests, each answered by a SandboxResult as a dict. Two kinds: "light" holds little more than
`math` (a fork of a small process is cheap), "full" holds sympy and the stdlib modules a program
may use (PRELOADED). The worker never runs program code itself: each program runs in a forked child
that confines itself (confine.py) and then runs it (runner.py); the worker supervises it (wall
clock, output size), kills its whole process group and every stray descendant, and removes its
folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import sys
import sysconfig
import time
from types import SimpleNamespace

from distill.sandbox import confine, wire
from distill.sandbox.readout import read_answer
from distill.sandbox.runner import RESULT_FD, report, run_code

LIGHT_PRELOADED = ("math",)
# Imported once by a full worker, so programs find them loaded: a program running as `nobody` may not
# be able to read the Python installation's files at all (an interpreter in root's home folder).
PRELOADED = ("math", "cmath", "fractions", "decimal", "statistics", "random", "itertools", "functools",
             "collections", "re", "numbers", "datetime", "string", "operator", "heapq", "bisect", "copy",
             "time", "calendar", "traceback", "linecache", "sympy")

# Exercises sympy's lazily imported paths (solve, nsimplify, evalf) once, before any fork.
WARM_UP = """
from sympy import *
import math
x, y = symbols('x y')
answer = solve(Eq(2 * x + 3, 7), x)[0] + solve([x + y - 10, x - y - 2], [x, y])[x]
answer += float(Rational(1, 3)) + float(sqrt(2)) + N(pi) + nsimplify(0.5) + floor(Rational(7, 2))
answer += solve(x**2 - 4, x)[1] + simplify((x**2 - 1) / (x - 1)).subs(x, 2) + math.ceil(2.5)
answer = [answer]
"""

RULESET_FD = RESULT_FD + 1
TAIL_BYTES = 2000
_MAX_REPORT_BYTES = 1 << 16
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT, signal.SIGFPE}


def python_dirs(installation: list[str], modules: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The folders programs may read: the Python installation as the pool sees it (`installation`:
    this process runs without `site`, so it cannot tell a virtual environment's site-packages) and as
    this process sees it, and the sys.path entries that hold `modules` (e.g. sympy in a user site)."""
    paths = sysconfig.get_paths()
    found = [*installation, *(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))]
    for name in modules:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            folder = os.path.dirname(os.path.realpath(file))
            found.append(os.path.dirname(folder) if os.path.basename(file) == "__init__.py" else folder)
    unique = list(dict.fromkeys(os.path.realpath(p) for p in found if os.path.isdir(p)))
    return tuple(p for p in unique if not any(p != q and p.startswith(q + os.sep) for q in unique))


class Worker:
    """Runs programs one at a time, each in a confined child of this process."""

    def __init__(self, limits: SimpleNamespace, folder: str, installation: list[str],
                 modules: tuple[str, ...] = ()):
        self.limits = limits
        self.uid, self.gid, self.user = confine.sandbox_identity()
        self.read_dirs = python_dirs(installation, modules)
        self.landlock_abi = confine.landlock_abi()
        confine.become_subreaper()
        self.network_namespace = confine.enter_network_namespace()
        # Programs run one at a time, each in a fresh folder inside this one, which is root-owned and
        # not listable when programs run as `nobody`, and emptied after every program.
        self.base = os.path.realpath(folder)
        os.mkdir(self.base, 0o700)
        os.chmod(self.base, 0o711)
        self.count = 0
        # A child moves its descriptors to 0..RULESET_FD. Holding every number up to there keeps the
        # worker's own (this one, the ruleset, the pipes) above them, so no dup2 in the child can
        # overwrite a descriptor it has still to move.
        self._held = []
        self.devnull = os.open(os.devnull, os.O_RDWR)
        while self.devnull <= RULESET_FD:
            self._held.append(self.devnull)
            self.devnull = os.open(os.devnull, os.O_RDWR)
        self.rlimits = confine.rlimit_plan(limits.cpu_seconds, limits.memory_mb, limits.max_processes,
                                           limits.max_open_files, limits.max_output_kb * 1024)
        # Built once; each child only enforces them (cheaper than building them per program).
        self.ruleset = confine.landlock_ruleset(self.landlock_abi, self.read_dirs, self.base) \
            if self.landlock_abi else None
        self.hook = confine.audit_hook(self.read_dirs, self.base) if limits.audit_hook else None

    def isolation(self) -> dict:
        """Which layers are active here (docs/sandbox.md says what each one guards)."""
        return {"user": f"{self.user} (uid {self.uid})", "landlock_abi": self.landlock_abi,
                "network_namespace": self.network_namespace, "audit_hook": self.limits.audit_hook,
                "rlimits": True, "process_group_kill": True, "subreaper": True}

    def _empty_base(self) -> None:
        """Remove everything a program left in the worker's folder (its own folder, usually empty)."""
        for name in os.listdir(self.base):
            try:
                _remove_tree(os.path.join(self.base, name))
            except OSError:  # left for close(), which removes the worker's whole folder
                pass

    def close(self) -> None:
        try:
            _remove_tree(self.base)
        except OSError:
            pass

    # ------------------------------------------------------------ one program
    def run(self, code: str) -> dict:
        self.count += 1
        work_dir = os.path.join(self.base, str(self.count))
        os.mkdir(work_dir, 0o700)
        if os.geteuid() == 0:
            os.chown(work_dir, self.uid, self.gid)
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                self._child(code, work_dir, [w for _, w in pipes])
            finally:
                os._exit(70)  # whatever happens, a child never returns into the worker's loop
        for _, w in pipes:
            os.close(w)
        readers = [r for r, _ in pipes]
        try:
            report, err_tail, killed, status, cpu = self._supervise(pid, readers, start)
        finally:
            for r in readers:
                os.close(r)
            _kill_strays()
            self._empty_base()
        seconds = time.monotonic() - start
        answer, verdict, error = self._judge(report, killed, status, cpu)
        return {"answer": answer, "verdict": verdict, "error": error,
                "stderr_tail": err_tail.decode("utf-8", "replace")[-TAIL_BYTES:], "seconds": round(seconds, 6)}

    def _supervise(self, pid: int, readers: list[int], start: float):
        """Collect output and the result until the child exits, the clock runs out or the output cap
        is passed; then kill its process group. Returns (report, stderr tail, why killed, wait status,
        CPU seconds)."""
        _, err_r, res_r = readers
        cap = self.limits.max_output_kb * 1024
        deadline = start + self.limits.timeout_s
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        for fd in (*readers, pidfd):
            poller.register(fd, select.POLLIN)
        written, err_tail, report_bytes, killed, exited = 0, bytearray(), bytearray(), "", False
        try:
            while not exited and not killed:
                left = deadline - time.monotonic()
                if left <= 0:
                    killed = "timeout"
                    break
                for fd, _ in poller.poll(left * 1000):
                    if fd == pidfd:
                        exited = True
                        continue
                    data = os.read(fd, 65536)
                    if not data:
                        poller.unregister(fd)
                    elif fd == res_r:
                        report_bytes += data[: _MAX_REPORT_BYTES - len(report_bytes)]
                    else:
                        written += len(data)
                        if fd == err_r:
                            err_tail = (err_tail + data)[-4 * TAIL_BYTES:]
                        if written > cap:
                            killed = "output"
            _kill_group(pid)
            _, status, usage = os.wait4(pid, 0)
        finally:
            os.close(pidfd)
        # What the child wrote just before it exited may still sit in the pipes (a bounded read: a
        # stray process that left the group may still be writing until _kill_strays).
        for fd in (err_r, res_r):
            os.set_blocking(fd, False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(16):
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    if fd == res_r:
                        report_bytes += data[: _MAX_REPORT_BYTES - len(report_bytes)]
                    else:
                        err_tail = (err_tail + data)[-4 * TAIL_BYTES:]
        report = None
        if report_bytes:
            try:
                report = json.loads(report_bytes)
            except ValueError:
                report = {"status": "exception", "error": "the program's result could not be read"}
        return report, bytes(err_tail), killed, status, usage.ru_utime + usage.ru_stime

    def _judge(self, report: dict | None, killed: str, status: int, cpu: float):
        """(answer, verdict, reason) from the child's report, or from how it ended."""
        if report is not None:
            kind, error = report.get("status"), str(report.get("error", ""))[:500]
            answer = report.get("answer")
            if kind == "ok" and type(answer) in (int, float) and math.isfinite(answer):
                return float(answer), "ok", ""
            if kind == "no_answer":
                return None, "no_answer", error
            if kind == "syntax":
                return None, "bad_format", error
            return None, "exec_error", error
        limits = self.limits
        if killed == "timeout":
            return None, "timeout", f"no result within {limits.timeout_s:g} s (wall clock)"
        if killed == "output":
            return None, "exec_error", f"wrote more than {limits.max_output_kb} KiB of output"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds - 0.05):
                return None, "timeout", f"used its {limits.cpu_seconds} s of CPU time"
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
            if sig == signal.SIGXFSZ:
                return None, "exec_error", f"wrote a file over {limits.max_output_kb} KiB ({name})"
            if sig in _CRASH_SIGNALS:
                return None, "exec_error", f"crashed ({name})"
            return None, "exec_error", f"killed by {name}"
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        return None, "exec_error", f"exited with status {code} before the program finished (os._exit?)"

    # ------------------------------------------------------------ the child
    def _child(self, code: str, work_dir: str, writers: list[int]) -> None:
        """Confine this forked process, run the program, report on RESULT_FD, exit. Never returns."""
        os.setsid()  # own session and process group: the worker kills the group as a whole
        os.dup2(self.devnull, 0)
        os.dup2(writers[0], 1)
        os.dup2(writers[1], 2)
        if writers[2] != RESULT_FD:
            os.dup2(writers[2], RESULT_FD)
        if self.ruleset is not None:
            os.dup2(self.ruleset, RULESET_FD)
        # The pool's channel and every other descriptor of the worker.
        os.closerange(RESULT_FD + 1 if self.ruleset is None else RULESET_FD + 1, 1 << 16)
        try:
            os.chdir(work_dir)
            os.umask(0o077)
            confine.set_rlimits(self.rlimits)
            if self.ruleset is not None:
                confine.landlock_enforce(RULESET_FD)
            confine.drop_privileges(self.uid, self.gid)
            confine.die_with_worker()
            if self.hook is not None:
                confine.install_audit_hook(*self.hook, work_dir)
        except BaseException as exc:  # noqa: BLE001  (the sandbox itself failed: say so, never run the program)
            report({"status": "setup", "error": f"sandbox setup failed: {type(exc).__name__}: {exc}"})
        try:
            outcome = run_code(code)
        except BaseException as exc:  # noqa: BLE001  (a failure of run_code itself, not of the program)
            outcome = {"status": "setup", "error": f"sandbox failure: {type(exc).__name__}: {exc}"[:400]}
        report(outcome)


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):  # the group; the child if not yet its leader
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_strays() -> None:
    """Kill and reap every remaining descendant: as a subreaper, the worker inherits each orphan of a
    program, including those that left its process group. Cheap when there are none (one waitpid)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        for child in _children(os.getpid()):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry))
    return found


def _remove_tree(path: str) -> None:
    """Remove what a program left (its processes are all dead by now, so nothing changes under us)."""
    try:
        os.rmdir(path)  # the usual case: its empty folder
        return
    except NotADirectoryError:  # a file or a symbolic link
        os.unlink(path)
        return
    except OSError:
        pass
    if os.geteuid() != 0:  # a program may have made its own folders unreadable (mode 0)
        os.chmod(path, 0o700)
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o700)
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            target = os.path.join(root, name)
            os.unlink(target) if os.path.islink(target) else os.rmdir(target)
    os.rmdir(path)


def _preload(kind: str) -> tuple[str, ...]:
    """Import what programs of this kind of worker find loaded; the names imported."""
    import gc
    import importlib

    modules = PRELOADED if kind == "full" else LIGHT_PRELOADED
    for name in modules:
        importlib.import_module(name)
    # Run the child's path once here, so what it initialises on first use is inherited by every
    # child instead of redone in each: above all the compiler's AST types (the first compile() in a
    # process costs about 2 ms; the worker's own modules all came from .pyc files).
    namespace: dict = {}
    exec(compile(WARM_UP if kind == "full" else "answer = [6 * 7]", "<warm-up>", "exec"), namespace)  # noqa: S102
    json.dumps({"status": "ok", "answer": read_answer(namespace)[0], "error": ""})
    # Children then share these objects' pages instead of copying them when the collector runs.
    gc.collect()
    gc.freeze()
    return modules


def main(config_json: str) -> None:
    """Serve requests from the pool until it closes the channel."""
    config = json.loads(config_json)
    # The pool's channel moves off 0/1, which point to /dev/null from here on.
    channel_in, channel_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the pool, not us
    os.environ.clear()  # started with none; this drops what Python itself set (LC_CTYPE coercion)
    try:
        modules = _preload(config["kind"])
        # The fields of SandboxLimits (a plain namespace: the dataclass machinery is not loaded here).
        limits = SimpleNamespace(**config["limits"])
        worker = Worker(limits, config["folder"], config["installation"], modules)
    except Exception as exc:  # noqa: BLE001  (reported to the pool, which raises it)
        wire.send(channel_out, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    try:
        check = worker.run("answer = 6 * 7")
        ok = check["verdict"] == "ok" and check["answer"] == 42.0
        loaded = sorted({name.partition(".")[0] for name in sys.modules})
        wire.send(channel_out, {"ready": ok, "isolation": worker.isolation(), "modules": loaded,
                                "error": "" if ok else f"self-test failed: {check}"})
        while ok and (request := wire.receive(channel_in)) is not None:
            wire.send(channel_out, worker.run(request["code"]))
    except BrokenPipeError:
        pass
    finally:
        worker.close()
