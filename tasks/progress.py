"""Progress artifacts in the Prefect UI for long steps (generation, training, evaluation).

The work runs in a child process that writes its progress to disk (shards, metric lines); the task
polls that and updates one progress artifact, so the UI shows how far a step is without the child
knowing anything of Prefect.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prefect.artifacts import create_progress_artifact, update_progress_artifact

T = TypeVar("T")
POLL_SECONDS = 2.0


def _artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def with_progress(key: str, description: str, fraction: Callable[[], float], work: Callable[..., T],
                  *args: Any) -> T:
    """Run `work(*args)` while a progress artifact tracks `fraction()` (0..1), polled every 2 s."""
    try:
        from prefect.runtime import flow_run

        # Keys are global on a Prefect server: scoped by the flow run, so runs never overwrite each other's.
        artifact_id = create_progress_artifact(0.0, key=_artifact_key(f"{flow_run.id}-{key}"), description=description)
    except Exception:  # noqa: BLE001 -- no Prefect run context (called outside a flow): run without the artifact
        return work(*args)
    stop = threading.Event()

    def poll() -> None:
        last = -1.0
        while not stop.wait(POLL_SECONDS):
            try:
                value = round(100.0 * min(max(fraction(), 0.0), 1.0), 1)
                if value != last:
                    update_progress_artifact(artifact_id, value)
                    last = value
            except Exception:  # noqa: BLE001, S110 -- progress is best effort: never fail the step over it
                pass

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        result = work(*args)
    finally:
        stop.set()
        watcher.join()
    update_progress_artifact(artifact_id, 100.0)
    return result
