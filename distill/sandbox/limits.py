"""What a sandboxed program may use, and what running it gave.

    from distill.sandbox import SandboxLimits, SandboxResult
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

VERDICTS = ("ok", "exec_error", "timeout", "no_answer", "bad_format")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits on one program run (each program gets them afresh)."""

    timeout_s: float = 5.0
    """Wall-clock limit; past it the program's whole process group is killed (verdict timeout)."""
    cpu_seconds: int = 5
    """RLIMIT_CPU: CPU time before SIGXCPU, then SIGKILL one second later (verdict timeout)."""
    memory_mb: int = 1024
    """RLIMIT_AS: address space in MiB, including the worker's interpreter (about 60 MiB with sympy)."""
    max_output_kb: int = 64
    """stdout + stderr the program may write (beyond it: killed, exec_error); also RLIMIT_FSIZE per file."""
    max_processes: int = 8
    """RLIMIT_NPROC for the sandbox user (binds only when programs run as a non-root user)."""
    max_open_files: int = 32
    """RLIMIT_NOFILE: highest file descriptor number + 1."""
    audit_hook: bool = True
    """Also install the in-process audit hook (clear errors for sockets, forks, files outside the
    folder). The OS layers hold without it; tests turn it off to check them alone."""


@dataclass
class SandboxResult:
    """What running one program gave.

    verdict: ok (ran and left a numeric `answer`), exec_error (raised, crashed, exited early, hit the
    memory or output limit), timeout (wall clock or CPU limit), no_answer (ran, but `answer` is
    missing or not a number), bad_format (not a Python program: syntax error, not text).
    """

    answer: float | None
    verdict: str
    error: str = ""
    """Short reason, e.g. "ZeroDivisionError: division by zero (line 3)"; empty when ok."""
    stderr_tail: str = ""
    """The last 2,000 characters the program wrote to stderr (tracebacks)."""
    seconds: float = 0.0
    """Wall-clock time of the program's process."""

    def to_dict(self) -> dict:
        return asdict(self)
