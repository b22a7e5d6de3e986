"""Prefect's temporary API: started early, and one start at a time per PREFECT_HOME.

With no Prefect server configured (no PREFECT_API_URL), the first flow of a command starts Prefect's
temporary server, a subprocess that takes 6 to 12 s on a 2-core machine before it answers. A command
that will run a flow calls `start_early()` as soon as it knows so; the server then comes up while
the command imports torch, reads its config and checks its inputs, and `ready()`, called just before
the first flow, waits for whatever is left.

Two commands starting in the same second on a fresh PREFECT_HOME would both migrate its new SQLite
database and one of them fails; the start is therefore serialised by a lock file in PREFECT_HOME.
"""

from __future__ import annotations

import contextvars
import fcntl
import threading
import time
from pathlib import Path

_LOCK_NAME = ".siked-temporary-server.lock"
_starting: threading.Thread | None = None
_guard = threading.Lock()


def start_early() -> None:
    """Begin starting the temporary server in the background, if one is needed and not yet begun."""
    global _starting
    with _guard:
        if _starting is None:
            # The thread sees the caller's Prefect settings context (a test harness's API, a profile).
            context = contextvars.copy_context()
            _starting = threading.Thread(target=context.run, args=(_start_if_needed,),
                                         name="prefect-temporary-server", daemon=True)
            _starting.start()


def ready() -> None:
    """Return once the temporary server (if one is needed) answers; call before the first flow.

    A start that failed here is left to Prefect's own start at the first flow, which reports it."""
    start_early()
    assert _starting is not None
    _starting.join()


def abandon() -> None:
    """At a command's exit: stop a temporary server whose start is still under way.

    A command that fails before its first flow must not leave the server's process behind: the
    starting thread registers the server's own stop at exit only once its process exists."""
    if _starting is None or not _starting.is_alive():
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    for _ in range(100):  # the process is created within moments of the thread's start
        if server.server_process is not None or not _starting.is_alive():
            break
        time.sleep(0.05)
    if server.server_process is not None:
        server.stop()


def _start_if_needed() -> None:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return  # a configured server (or none allowed): nothing to start
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / _LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001, S110 -- the first flow starts it again and reports the failure
            pass
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
