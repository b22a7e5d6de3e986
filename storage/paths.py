"""Where things live: the home folder, the data folder, and a run's layout.

`SIKED_HOME` (default: the user's cache directory, `~/.cache/siked`) holds prepared models, runs
and the local mirrors of model folders from remote run roots; `SIKED_DATA_DIR` points at the original benchmark files. Every path of a run is defined
here, so the layout can be read in one place.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import platformdirs


def siked_home() -> Path:
    """The folder for caches, prepared models and runs."""
    env = os.environ.get("SIKED_HOME")
    # absolute, so that what is recorded under it names the same folders from any working directory
    return Path(env).expanduser().absolute() if env else Path(platformdirs.user_cache_dir("siked"))


def models_dir() -> Path:
    return siked_home() / "models"


def mirrors_dir() -> Path:
    """Local copies of model folders kept under a remote run root (storage.mirror)."""
    return siked_home() / "mirror"


def default_runs_root() -> str:
    return str(siked_home() / "runs")


def resolve_runs_root(configured: str | None) -> str:
    """The runs root to use: `configured` (a config's `runs_root`, `--runs-root`), else the default.

    A local path is made absolute here, once: run indexes record the step folders under it, and a
    relative path would name other folders from another working directory.
    """
    root = configured or default_runs_root()
    if "://" in root:
        return root
    return os.path.abspath(os.path.expanduser(root))


class DataDirMissing(FileNotFoundError):
    pass


def data_dir(configured: str | None = None) -> Path:
    """The folder holding the original benchmark files (config value, else `SIKED_DATA_DIR`)."""
    value = configured or os.environ.get("SIKED_DATA_DIR")
    if not value:
        raise DataDirMissing(
            "no data folder: set SIKED_DATA_DIR (or data_dir in the config) to the folder holding "
            "gsm8k/, svamp/, asdiv/, multiarith/ and distilling_step_by_step/"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataDirMissing(f"data folder {path} does not exist (from SIKED_DATA_DIR or data_dir)")
    return path


class PathOutsideRoot(ValueError):
    """A path built under a folder that, once `..` is resolved, would lie outside that folder."""


def join(root: str, *parts: str) -> str:
    """Join an fsspec URL or local path with relative parts; PathOutsideRoot when the parts climb
    out of `root` (every run, step and output path is built here, from names a config gives)."""
    root = root.rstrip("/")
    return inside(root, "/".join([root, *[p.strip("/") for p in parts]]))


def inside(root: str, path: str) -> str:
    """`path`, once proven to stay inside `root` after `..` and `.` are resolved; PathOutsideRoot
    otherwise. Both are normalised as text (a URL as the posix path after its scheme), not through
    the file system: a folder inside a home may be a link to another disk on purpose."""
    scheme, sep, rest = root.rpartition("://")
    path_scheme, path_sep, path_rest = path.rpartition("://")
    if (scheme, sep) != (path_scheme, path_sep):
        raise PathOutsideRoot(f"{path} is not under {root}")
    if sep:
        base, target = (posixpath.normpath("/" + p.lstrip("/")) for p in (rest, path_rest))
        common = posixpath.commonpath([base, target])
    else:
        # POSIX keeps a leading `//` through normpath; commonpath does not: collapse it first.
        base, target = (os.path.normpath("/" + os.path.abspath(p).lstrip("/")) for p in (root or "/", path))
        common = os.path.commonpath([base, target])
    if common != base:
        raise PathOutsideRoot(f"{path} leads outside {root or '/'}: a name in it climbs out with '..'")
    return path


@dataclass(frozen=True)
class RunLayout:
    """Every artifact path of one run, `<runs_root>/<run_id>/...`."""

    root: str
    run_id: str

    @property
    def run_dir(self) -> str:
        return join(self.root, self.run_id)

    def path(self, *parts: str) -> str:
        return join(self.run_dir, *parts)

    @property
    def config(self) -> str:
        return self.path("config.yaml")

    def iteration_dir(self, iteration: int) -> str:
        return self.path(f"iter-{iteration:02d}")

    def stage_dir(self, stage: str) -> str:
        """`base` (the untrained student) or `iter-XX`."""
        return self.path(stage)

    def summary(self, stage: str) -> str:
        """What one stage produced and scored (JSON), read by the report and `siked status`."""
        return join(self.stage_dir(stage), "summary.json")

    @property
    def contamination(self) -> str:
        """Which evaluation questions overlap the training problems (JSON), for the report."""
        return self.path("contamination.json")

    @property
    def compute(self) -> str:
        """What the run's steps cost, summed per step kind (JSON, tasks.compute), for the report."""
        return self.path("compute.json")

    def report_dir(self) -> str:
        return self.path("report")

    def report(self) -> str:
        return join(self.report_dir(), "report.md")


@dataclass(frozen=True)
class ExperimentLayout:
    """An experiment's own files, `<runs_root>/experiments/<name>/...`; its arms' runs are ordinary
    run folders under the same runs root."""

    root: str
    name: str

    @property
    def dir(self) -> str:
        return join(self.root, "experiments", self.name)

    def path(self, *parts: str) -> str:
        return join(self.dir, *parts)

    @property
    def spec(self) -> str:
        return self.path("experiment.yaml")

    @property
    def runs(self) -> str:
        return self.path("runs.json")

    @property
    def outcomes(self) -> str:
        return self.path("outcomes.parquet")

    @property
    def results(self) -> str:
        return self.path("results.json")

    @property
    def report(self) -> str:
        return self.path("report.md")


class NotARunFolder(ValueError):
    """A path or URL that cannot be a run folder (`/`, `memory://run`): no runs root above it."""


def layout_for_run_dir(run_dir: str) -> RunLayout:
    """The layout of an existing run folder (local path or fsspec URL): its parent is the runs root.

    `memory://runs/quickstart-ab12` -> RunLayout(root="memory://runs", run_id="quickstart-ab12").
    """
    scheme, sep, rest = str(run_dir).rpartition("://")
    if not sep:  # a local path: make it absolute so `.`, `..` and bare names have a parent
        rest = os.path.abspath(os.path.expanduser(rest))
    parent, _, name = rest.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise NotARunFolder(f"{run_dir!r} does not name a run folder")
    if sep and not parent:
        raise NotARunFolder(f"{run_dir!r}: a run folder lives inside a runs root, e.g. {scheme}://runs/{name}")
    return RunLayout(root=f"{scheme}{sep}{parent}" if parent else "/", run_id=name)
