"""Prefect's temporary API as the commands start it (flows.prefect_api): early, one start at a time
per PREFECT_HOME, and never left behind by a command that fails before its first flow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_ONE_FLOW = textwrap.dedent("""
    from prefect import flow
    from flows import prefect_api

    @flow
    def one():
        return 41 + 1

    prefect_api.ready()
    print("result", one())
""")


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids |= {int(p) for p in (task / "children").read_text().split()}
    return pids


def test_abandon_stops_a_start_still_under_way(monkeypatch, tmp_path):
    from prefect.server.api.server import SubprocessASGIServer

    from flows import prefect_api

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(prefect_api, "_starting", None)
    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})
    before = _children()
    prefect_api.start_early()
    prefect_api.abandon()
    prefect_api._starting.join(timeout=30)
    assert not prefect_api._starting.is_alive()
    assert _children() - before == set(), "the temporary server's process outlived the command"


@pytest.mark.slow
def test_two_commands_starting_at_once_on_a_fresh_prefect_home_both_run(tmp_path):
    """Two temporary servers migrating one new SQLite database at once: one failed with
    `database is locked` before the start was serialised."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    commands = [subprocess.Popen([sys.executable, "-c", _ONE_FLOW], cwd=tmp_path, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [c.communicate(timeout=300)[0] for c in commands]
    for command, output in zip(commands, outputs, strict=True):
        assert command.returncode == 0, output[-3000:]
        assert "result 42" in output, output[-3000:]
        assert "database is locked" not in output, output[-3000:]
