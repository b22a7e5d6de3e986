"""The part of the sandbox that runs inside the confined child: compile the program, run it, read its
`answer`, report on RESULT_FD, exit. server.py forks the child and confines it first, then calls

    report(run_code(code))   # e.g. {"status": "ok", "answer": 12.0, "error": ""} on RESULT_FD; _exit(0)

Report statuses: ok / no_answer (see readout.py), syntax (not Python), exception (raised),
exit (sys.exit with a non-zero code), setup (the sandbox itself failed).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import linecache
import os
import sys
import traceback

from distill.sandbox.readout import read_answer

RESULT_FD = 3


def run_code(code: str) -> dict:
    """Compile and run `code` in a fresh namespace, then read its `answer` (inside the sandbox)."""
    main_pid = os.getpid()
    sys.argv = ["<program>"]
    try:
        compiled = compile(code, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        text = getattr(exc, "msg", None) or _text(exc)
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        return {"status": "syntax", "error": f"{type(exc).__name__}: {text}{line}"[:400]}
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compiled, namespace)  # noqa: S102  (the point: in the confined child only)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _exit_if_forked(main_pid)
            return {"status": "exit", "error": f"the program called sys.exit({exc.code!r})"[:300]}
    except BaseException as exc:  # noqa: BLE001  (whatever the program raised is its verdict)
        _exit_if_forked(main_pid)
        with contextlib.suppress(BaseException):  # printing may fail too (MemoryError, a closed stderr)
            linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")
            traceback.print_exc()
        line = ""
        with contextlib.suppress(BaseException):
            line = next((f" (line {frame.lineno})" for frame in reversed(traceback.extract_tb(exc.__traceback__))
                         if frame.filename == "<program>"), "")
        return {"status": "exception", "error": f"{type(exc).__name__}: {_text(exc)}"[:400] + line}
    _exit_if_forked(main_pid)
    try:
        answer, verdict, error = read_answer(namespace)
    except BaseException as exc:  # noqa: BLE001  (e.g. a hostile __float__ or __eq__)
        return {"status": "no_answer", "error": f"reading `answer` failed: {type(exc).__name__}: {_text(exc)}"[:400]}
    return {"status": verdict, "answer": answer, "error": error}


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001  (a hostile __str__)
        return "?"


def _exit_if_forked(main_pid: int) -> None:
    """A process the program forked finishes silently: only the program's own process reports."""
    if os.getpid() != main_pid:
        os._exit(0)


def report(message: dict) -> None:
    """Write `message` on RESULT_FD and end this process (never returns)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):  # the program may have closed or replaced them
            stream.flush()
    try:
        if message.get("status") == "ok" and type(message.get("answer")) is float:
            # The usual report, without the JSON encoder: its first use in each fresh child costs
            # more than the rest of a trivial program (copy-on-write faults).
            data = b'{"status": "ok", "answer": %r, "error": ""}' % message["answer"]
        else:
            data = json.dumps(message).encode()
        while data:
            data = data[os.write(RESULT_FD, data):]
    finally:
        os._exit(0)
