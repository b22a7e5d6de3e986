"""The step store: finished step outputs shared by every run under one runs root.

    <runs_root>/steps/<kind>/<key>/          one step's outputs (Parquet, sharded folders, a student)
    <runs_root>/steps/<kind>/<key>/step.json what the step is and which run computed it (written last)
    <runs_root>/<run>/steps.json             the run index: every step the run uses, with its outputs

A step's key (tasks.pipeline) hashes exactly what the step reads, so two runs whose configs agree
on it find the same folder and the second reuses the first's outputs. The run folder keeps what is
the run's own: config.yaml, the index, summaries and the report.

Claims: a run computing a step holds its claim; another run needing the same step waits for the
claim to be released and then finds the outputs complete. On a local disk the claim is an exclusive
`flock` on `<step>/.claim.lock`, which the kernel releases when the holding process dies, even by
SIGKILL. On an object store the claim is `<step>/_claim.json`, refreshed every CLAIM_HEARTBEAT_S
by a thread of its holder; a claim not refreshed for CLAIM_STALE_S is taken over (a killed holder
costs that long). Outputs are complete only when their manifests are written last, so a waiter
never reads a half-written output whatever the claim says.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from storage import fs
from storage.paths import RunLayout, join

INDEX_FORMAT = 1
CLAIM_HEARTBEAT_S = float(os.environ.get("SIKED_CLAIM_HEARTBEAT_S", "10"))
CLAIM_STALE_S = float(os.environ.get("SIKED_CLAIM_STALE_S", "60"))
POLL_S = 1.0
LOCK_NAME = ".claim.lock"
CLAIM_NAME = "_claim.json"
STEP_INFO = "step.json"


class OldRunFolder(RuntimeError):
    """A run folder written before steps were shared (no steps.json)."""


def steps_root(runs_root: str) -> str:
    return join(runs_root, "steps")


def step_dir(runs_root: str, kind: str, key: str) -> str:
    return join(steps_root(runs_root), kind, key)


def index_url(layout: RunLayout) -> str:
    return layout.path("steps.json")


def _within_root(root: str, url: str) -> str:
    """`url` relative to the runs root `root` when it lies inside it (the index then travels with a
    copied or moved runs root), else `url` as given."""
    prefix = root.rstrip("/") + "/"
    return url.removeprefix(prefix)


def _from_root(root: str, recorded: str) -> str:
    return recorded if "://" in recorded or recorded.startswith("/") else join(root, recorded)


def _map_locations(entry: dict[str, Any], convert: Callable[[str], str]) -> dict[str, Any]:
    return {**entry, "dir": convert(entry["dir"]),
            "outputs": {role: convert(url) for role, url in entry["outputs"].items()}}


def write_index(layout: RunLayout, steps: list[dict[str, Any]]) -> None:
    """The run index: `steps` are {name, kind, iteration, key, dir, outputs: {role: url}}; folders
    inside the runs root are stored relative to it."""
    stored = [_map_locations(entry, lambda url: _within_root(layout.root, url)) for entry in steps]
    fs.write_json(index_url(layout), {"format": INDEX_FORMAT, "run": layout.run_id, "steps": stored})


def _resolved_index(root: str, url: str) -> list[dict[str, Any]]:
    return [_map_locations(entry, lambda rel: _from_root(root, rel)) for entry in fs.read_json(url)["steps"]]


def read_index(layout: RunLayout) -> list[dict[str, Any]]:
    """The steps a run uses, their folders under the layout's runs root; OldRunFolder for a folder
    made before the step store."""
    url = index_url(layout)
    if not fs.exists(url):
        if fs.exists(layout.path("iter-00", "teacher_samples")) or fs.exists(layout.path("problems")):
            raise OldRunFolder(
                f"{layout.run_dir} was written before steps were shared between runs (it has no steps.json). "
                "Run its config again with `siked run <run>/config.yaml`: the new run computes its steps "
                "once in the step store; the old folder can then be deleted.")
        raise fs.ArtifactMissing(f"{layout.run_dir} has no steps.json (the run never started)")
    return _resolved_index(layout.root, url)


def run_indexes(runs_root: str) -> dict[str, list[dict[str, Any]]]:
    """{run id: its steps} of every run folder under `runs_root` that has an index."""
    filesystem, root = fs.resolve(runs_root)
    found = {}
    try:
        entries = filesystem.ls(root, detail=False)
    except FileNotFoundError:
        return {}
    for entry in entries:
        name = entry.rstrip("/").rpartition("/")[2]
        url = join(runs_root, name, "steps.json")
        if name != "steps" and fs.exists(url):
            found[name] = _resolved_index(runs_root, url)
    return found


def stored_step_dirs(runs_root: str) -> list[str]:
    """URLs of every step folder in the store (`steps/<kind>/<key>`)."""
    filesystem, root = fs.resolve(steps_root(runs_root))
    if not filesystem.isdir(root):
        return []
    dirs = []
    for kind in sorted(filesystem.ls(root, detail=False)):
        kind_name = kind.rstrip("/").rpartition("/")[2]
        if filesystem.isdir(kind):
            for key in sorted(filesystem.ls(kind, detail=False)):
                dirs.append(join(steps_root(runs_root), kind_name, key.rstrip("/").rpartition("/")[2]))
    return dirs


def step_identity(url: str) -> tuple[str, str]:
    """(kind, key) of the step folder `<runs_root>/steps/<kind>/<key>`: what the folder is, whichever
    way its root is spelled (a symlink, `//`, a relative path, a copied home)."""
    parts = url.rstrip("/").split("/")
    return parts[-2], parts[-1]


def real_location(url: str) -> str:
    """The folder `url` names with its spelling taken out: symlinks, `.`, `..` and repeated slashes
    resolved on a local disk; the protocol and normalised path elsewhere."""
    filesystem, path = fs.resolve(url)
    if fs.is_local(filesystem):
        return os.path.realpath(path)
    protocol = filesystem.protocol if isinstance(filesystem.protocol, str) else filesystem.protocol[0]
    return f"{protocol}://{os.path.normpath(path).lstrip('/')}"


def unreferenced_step_dirs(runs_root: str) -> list[str]:
    """Step folders of the store that no run index names.

    Index entries hold the absolute folder a run saw when it started, so the folders are compared
    by what they are, not by how they are spelled: an entry keeps a folder when its (kind, key)
    matches the folder's, or when its `dir` resolves to the same real location.
    """
    identities, locations = set(), set()
    for steps in run_indexes(runs_root).values():
        for step in steps:
            if step.get("kind") and step.get("key"):
                identities.add((step["kind"], step["key"]))
            elif step.get("dir"):
                identities.add(step_identity(step["dir"]))
            if step.get("dir"):
                locations.add(real_location(step["dir"]))
    return [d for d in stored_step_dirs(runs_root)
            if step_identity(d) not in identities and real_location(d) not in locations]


def remove_tree(url: str) -> None:
    filesystem, path = fs.resolve(url)
    if filesystem.exists(path):
        filesystem.rm(path, recursive=True)


def write_step_info(folder: str, info: dict[str, Any]) -> None:
    fs.write_json(join(folder, STEP_INFO), {**info, "finished": datetime.now(UTC).isoformat(timespec="seconds")})


def read_step_info(folder: str) -> dict[str, Any] | None:
    url = join(folder, STEP_INFO)
    return fs.read_json(url) if fs.exists(url) else None


# --------------------------------------------------------------------------- claims


def _holder(label: str) -> dict[str, Any]:
    return {"label": label, "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "updated": time.time()}


@contextmanager
def _local_claim(folder: str, label: str, on_wait: Callable[[dict], None]) -> Iterator[None]:
    path = fs.resolve(folder)[1]
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_NAME)
    with open(lock_path, "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    on_wait(_read_holder_file(lock_path))
                    waited = True
                time.sleep(POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_holder(label)))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)



def _read_holder_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.loads(handle.read() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def claim_held(folder: str) -> bool:
    """True while a process holds the claim of the step folder `folder` (a lock on a local disk, a
    fresh `_claim.json` on an object store); gc never removes such a folder."""
    filesystem, path = fs.resolve(folder)
    if not fs.is_local(filesystem):
        return _remote_claim_live(join(folder, CLAIM_NAME))
    lock_path = os.path.join(path, LOCK_NAME)
    if not os.path.exists(lock_path):
        return False
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _remote_claim_live(url: str) -> bool:
    if not fs.exists(url):
        return False
    try:
        claim = fs.read_json(url)
    except fs.ArtifactError:
        return False
    return time.time() - float(claim.get("updated", 0)) < CLAIM_STALE_S


@contextmanager
def _remote_claim(folder: str, label: str, on_wait: Callable[[dict], None]) -> Iterator[None]:
    url = join(folder, CLAIM_NAME)
    mine = _holder(label)
    waited = False
    while True:
        if _remote_claim_live(url):
            if not waited:
                on_wait(fs.read_json(url))
                waited = True
            time.sleep(POLL_S)
            continue
        fs.write_json(url, {**mine, "updated": time.time()})
        time.sleep(POLL_S)  # two takers may write at once: the one whose claim is read back wins
        try:
            if fs.read_json(url).get("token") == mine["token"]:
                break
        except fs.ArtifactError:
            pass
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(CLAIM_HEARTBEAT_S):
            try:
                fs.write_json(url, {**mine, "updated": time.time()})
            except Exception:  # noqa: BLE001, S110 -- a missed beat only shortens the claim; the next one retries
                pass

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        fs.remove(url)


def claim_step(folder: str, label: str, on_wait: Callable[[dict], None] = lambda holder: None):
    """Context manager: hold the claim of the step folder `folder`, waiting while another process
    holds it (`on_wait(holder)` is called once, with what the holder wrote about itself)."""
    filesystem, _ = fs.resolve(folder)
    if fs.is_local(filesystem):
        return _local_claim(folder, label, on_wait)
    return _remote_claim(folder, label, on_wait)


def step_output(layout: RunLayout, step: str, role: str) -> str:
    """Where the run's step `step` (e.g. "iter-00/generate") keeps its output `role`, from its index."""
    for entry in read_index(layout):
        if entry["name"] == step:
            return entry["outputs"][role]
    raise KeyError(f"{layout.run_dir} has no step {step!r}")
