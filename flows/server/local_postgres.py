"""A PostgreSQL cluster of its own for the local Prefect server, on loopback only.

Uses Debian's server binaries (`apt-get install postgresql`: /usr/lib/postgresql/<version>/bin),
or those of SIKED_PG_BINDIR, or the `pg_ctl` on PATH. The cluster folder holds `data/` (initdb)
and `postgres.log`. PostgreSQL refuses to run as root: a root caller runs it as the `postgres`
user that Debian's package creates (or `nobody`), which then owns the cluster folder; that
folder's parent must be reachable by that user.

Connections: TCP on 127.0.0.1 only (no Unix socket), superuser `prefect` with a password
(scram-sha-256), database `prefect`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

USER = "prefect"
DATABASE = "prefect"


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or a cluster step failed (the message says which and why)."""


def bindir() -> Path | None:
    """The folder of `initdb`, `pg_ctl` and `postgres`; None when no PostgreSQL server is installed."""
    if os.environ.get("SIKED_PG_BINDIR"):
        return Path(os.environ["SIKED_PG_BINDIR"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def run_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for an ordinary caller (itself), an unprivileged user for root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


def default_cluster_dir(state_dir: Path, tag: str) -> Path:
    """Where the cluster lives by default: in the state folder, or for root in the run user's home
    (the state folder is often under /root, which that user cannot enter)."""
    user = run_user()
    if user is None:
        return state_dir / "postgres"
    home = Path(user.pw_dir)
    return (home if home.is_dir() else Path("/tmp")) / f"siked-prefect-{tag}"


@dataclass(frozen=True)
class Cluster:
    """One cluster: `folder` (data/ and postgres.log), its TCP port and its superuser's password."""

    folder: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect (PREFECT_API_DATABASE_CONNECTION_URL)."""
        return f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a server binary as the run user, in the cluster folder."""
        binaries = bindir()
        if binaries is None:
            raise PostgresError("no PostgreSQL server found: install Debian's `postgresql` package "
                                "(apt-get install postgresql) or set SIKED_PG_BINDIR")
        user = run_user()
        ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "PGPASSWORD": self.password}
        done = subprocess.run([str(binaries / tool), *args], check=False, cwd=self.folder, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, **ids)
        if check and done.returncode != 0:
            raise PostgresError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                                f"{done.stdout[-2000:]}{done.stderr[-2000:]}{self._log_tail()}")
        return done

    def _log_tail(self) -> str:
        log = self.folder / "postgres.log"
        return f"\n{log}:\n{log.read_text(errors='replace')[-2000:]}" if log.is_file() else ""

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the folder and the cluster (once), owned by the run user."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        user = run_user()
        if user is not None:
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        if self.initialised():
            return
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        try:
            if user is not None:
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            os.chmod(pwfile, 0o600)
            # Local (socket) logins are off anyway: no socket directory is configured at start.
            self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "-E", "UTF8",
                      "--no-locale", "--auth-host=scram-sha-256", "--auth-local=reject")
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        """Start the server on 127.0.0.1:port and wait until it accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-o", options,
                  "-w", "-t", "60", "start")

    def create_database(self) -> None:
        """Create the `prefect` database unless it exists."""
        done = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE, check=False)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise PostgresError(f"createdb failed: {done.stderr.strip()}")

    def running(self) -> bool:
        return self.initialised() and self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut); nothing when it is not running."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
