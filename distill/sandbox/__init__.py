"""The PoT sandbox: run model-written Python and read the `answer` it leaves (docs/method.md, section 8).

    siked sandbox run program.py --timeout 5

    from distill.sandbox import SandboxLimits, SandboxPool, run_program
    result = run_program("answer = 3 * 4", SandboxLimits(timeout_s=5))   # SandboxResult(answer=12.0, ...)
    with SandboxPool(SandboxLimits(), workers=2) as pool:
        results = pool.run_many(programs)

Modules: limits.py (the limits and the result), pool.py (worker processes, parallel dispatch),
server.py (a worker: modules imported once, one confined fork per program, supervised), confine.py
(the OS layers), runner.py (what runs in the fork: the program, then the read-out), readout.py
(`answer` to a float), wire.py (messages). Design and threat model: docs/sandbox.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.sandbox.limits import VERDICTS, SandboxLimits, SandboxResult
    from distill.sandbox.pool import SandboxPool, run_program

__all__ = ["VERDICTS", "SandboxLimits", "SandboxPool", "SandboxResult", "run_program"]

# Loaded on first use: a worker process imports this package too, and every module it holds (the
# pool's subprocess and threads, dataclasses and inspect) makes each per-program fork slower.
_HOME = {"VERDICTS": "limits", "SandboxLimits": "limits", "SandboxResult": "limits",
         "SandboxPool": "pool", "run_program": "pool"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"distill.sandbox.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
