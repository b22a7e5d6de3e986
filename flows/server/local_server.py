"""A Prefect server on PostgreSQL on this machine, and a worker for the process work pool `siked`.

    python -m flows.server.local_server start     # make prefect-server: prints the UI's URL
    python -m flows.server.local_server status
    python -m flows.server.local_server stop      # make prefect-server-stop

Options (each also read from the environment): --dir (SIKED_PREFECT_DIR, default
`$SIKED_HOME/prefect-server`), --port (SIKED_PREFECT_PORT, 4200), --pg-port (SIKED_PG_PORT, 5499),
--pg-dir (SIKED_PG_DIR, see flows/server/local_postgres.py). Everything listens on 127.0.0.1 only.

The state folder holds `state.json` (ports, process ids, where the cluster is), `db-password`,
`prefect-home/` (the server's PREFECT_HOME), `server.log` and `worker.log`. The database keeps
flow runs, deployments and artifacts across stop and start. The worker runs from the repository
root with SIKED_PROJECT_DIR set to it, so the deployments of prefect.yaml find their configs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from flows.server.local_postgres import Cluster, PostgresError, default_cluster_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = "siked"


@dataclass
class Stack:
    """What `start` started: enough for `stop` to find it again (saved as state.json)."""

    folder: str
    port: int
    pg_port: int
    pg_dir: str
    server_pid: int | None = None
    worker_pid: int | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        return Path(self.folder) / "state.json"

    def save(self) -> None:
        self.state_file.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def log(self, name: str) -> Path:
        return Path(self.folder) / f"{name}.log"

    def cluster(self) -> Cluster:
        return Cluster(Path(self.pg_dir), self.pg_port, _password(Path(self.folder)))


def _password(folder: Path) -> str:
    """The database password, made once per state folder (readable by its owner only)."""
    path = folder / "db-password"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> int:
    """Start a process in a session of its own (it outlives the caller; stop() ends its group)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        # A recycled pid would belong to another program: ours all run `prefect`.
        return "prefect" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _end(pid: int | None, grace: float = 20.0) -> None:
    """SIGTERM the process group of `pid` (the worker's flow runs included), SIGKILL it after `grace` s."""
    if not _alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (the tests)
            if not _alive(pid) or _zombie(pid):
                return
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _wait_for(check, what: str, pid: int | None, log: Path, timeout: float) -> None:
    """Poll `check()` until true; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        if pid is not None and (not _alive(pid) or _zombie(pid)):
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    raise RuntimeError(f"{what} did not come up (log {log}):\n{tail}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start_server(stack: Stack, timeout: float = 180.0) -> None:
    """`prefect server start` on the cluster, in the background; returns once /api/health answers."""
    if not _port_free(stack.port):
        raise RuntimeError(f"port {stack.port} on 127.0.0.1 is taken: choose another with --port")
    home = Path(stack.folder) / "prefect-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_API_DATABASE_CONNECTION_URL": stack.cluster().url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the server's own clients talk to itself
    stack.server_pid = _spawn(_prefect("server", "start", "--host", "127.0.0.1", "--port", str(stack.port)),
                              stack.log("server"), env, REPO_ROOT)
    stack.save()
    health = f"{stack.api_url}/health"
    _wait_for(lambda: httpx.get(health, timeout=5).status_code == 200, "the Prefect server",
              stack.server_pid, stack.log("server"), timeout)


def _client_env(stack: Stack) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": stack.api_url, "SIKED_PROJECT_DIR": str(REPO_ROOT)}


def create_pool(stack: Stack) -> None:
    """The process work pool `siked`, with Prefect's default job template (kept if it exists)."""
    if httpx.get(f"{stack.api_url}/work_pools/{POOL}", timeout=10).status_code == 200:
        return
    done = subprocess.run(_prefect("work-pool", "create", POOL, "--type", "process"), check=False,
                          env=_client_env(stack), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"prefect work-pool create failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def start_worker(stack: Stack, env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
    """A process worker for the pool, in the background; returns once the pool reports it online."""
    env = {**_client_env(stack), **(env or {})}
    stack.worker_pid = _spawn(_prefect("worker", "start", "--pool", POOL, "--type", "process"),
                              stack.log("worker"), env, REPO_ROOT)
    stack.save()
    pool = f"{stack.api_url}/work_pools/{POOL}"
    _wait_for(lambda: httpx.get(pool, timeout=5).json().get("status") == "READY", "the worker",
              stack.worker_pid, stack.log("worker"), timeout)


def load(folder: Path) -> Stack | None:
    path = folder / "state.json"
    return Stack(**json.loads(path.read_text())) if path.is_file() else None


def start(folder: Path, port: int, pg_port: int, pg_dir: Path | None = None,
          worker_env: dict[str, str] | None = None) -> Stack:
    """PostgreSQL, then the server, the pool and a worker; a stack already running is returned as is.
    Whatever started is stopped again when a later part fails."""
    folder.mkdir(parents=True, exist_ok=True)
    old = load(folder)
    if old and _alive(old.server_pid) and _alive(old.worker_pid):
        return old
    if old:
        stop(folder)  # a half-stopped stack: start it afresh, on its database
    tag = f"{zlib.crc32(str(folder.resolve()).encode()):08x}"
    pg = pg_dir or (Path(old.pg_dir) if old else default_cluster_dir(folder, tag))
    stack = Stack(str(folder.resolve()), port, pg_port, str(pg))
    if not _port_free(pg_port):
        raise RuntimeError(f"port {pg_port} on 127.0.0.1 is taken: choose another with --pg-port")
    stack.save()
    try:
        cluster = stack.cluster()
        cluster.init()
        cluster.start()
        cluster.create_database()
        start_server(stack)
        create_pool(stack)
        start_worker(stack, worker_env)
    except BaseException:
        stop(folder)
        raise
    return stack


def stop(folder: Path) -> Stack | None:
    """Stop the worker (and its flow runs), the server, then PostgreSQL; the data stays."""
    stack = load(folder)
    if stack is None:
        return None
    _end(stack.worker_pid)
    _end(stack.server_pid)
    stack.cluster().stop()
    stack.worker_pid = stack.server_pid = None
    stack.save()
    return stack


@contextlib.contextmanager
def running(folder: Path, port: int, pg_port: int, pg_dir: Path | None = None,
            worker_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack for the length of a `with` block, stopped on the way out whatever happens."""
    try:
        yield start(folder, port, pg_port, pg_dir, worker_env)
    finally:
        stop(folder)


def _default_folder() -> Path:
    from storage.paths import siked_home

    return Path(os.environ.get("SIKED_PREFECT_DIR") or siked_home() / "prefect-server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.server.local_server", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("SIKED_PREFECT_PORT", "4200")))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("SIKED_PG_PORT", "5499")))
    parser.add_argument("--pg-dir", type=Path, default=os.environ.get("SIKED_PG_DIR") or None)
    args = parser.parse_args(argv)
    folder = args.dir or _default_folder()
    try:
        if args.action == "start":
            stack = start(folder, args.port, args.pg_port, args.pg_dir)
        elif args.action == "stop":
            stack = stop(folder)
            print("stopped" if stack else f"nothing to stop in {folder}")
            return 0
        else:
            stack = load(folder)
            if not (stack and _alive(stack.server_pid)):
                print(f"not running ({folder})")
                return 1
    except (PostgresError, RuntimeError) as exc:
        print(f"siked: {exc}", file=sys.stderr)
        return 1
    print(f"Prefect UI:  {stack.ui_url}\n"
          f"API:         export PREFECT_API_URL={stack.api_url}\n"
          f"worker:      pool {POOL!r} ({'online' if _alive(stack.worker_pid) else 'stopped'}), "
          f"log {stack.log('worker')}\n"
          f"PostgreSQL:  127.0.0.1:{stack.pg_port}, cluster {stack.pg_dir}\n"
          f"state:       {stack.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
