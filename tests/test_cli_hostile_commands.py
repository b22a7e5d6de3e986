"""Hostile command lines: each ends with one line on stderr naming what is wrong and a usage exit
code, never a traceback.

A row is (argv, exit code, words the last line of stderr must hold). `{tmp}` in an argument is the
test's temporary folder, where every file of FILES is written first; `{quickstart}` is the shipped
quickstart config. `siked experiment` rows use `--collect`, which reads the file as a run does but
starts nothing, so a check that stops refusing fails the row instead of running an experiment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main

REPO = Path(__file__).resolve().parents[1]

FILES = {
    "duplicate_key.yaml": "name: dup\ntrain:\n  lr: 0.001\n  lr: 0.1\n",
    "duplicate_arm.yaml": ("name: dup\nbase: configs/quickstart.yaml\nbaseline: short\narms:\n"
                           "  short: [eval.max_tokens=8]\n  long: []\n  short: [eval.max_tokens=64]\n"),
    "duplicate_base.yaml": "name: dup\nbase: {tmp}/duplicate_key.yaml\nbaseline: a\narms:\n  a: []\n",
    "bad_arm_override.yaml": ("name: bad\nbase: configs/quickstart.yaml\nbaseline: a\narms:\n"
                              "  a: ['eval.modes=[rationale']\n"),
}

HOSTILE_INPUTS = [
    # an override that is not valid YAML
    (["config", "show", "{quickstart}", "eval.modes=[rationale"], 2, ["eval.modes=[rationale", "not valid YAML"]),
    (["config", "show", "{quickstart}", "name=a\tb"], 2, ["name=a", "not valid YAML", "column 2"]),
    (["plan", "{quickstart}", "eval.modes=[rationale"], 2, ["eval.modes=[rationale", "not valid YAML"]),
    (["plan", "{tmp}/bad_arm_override.yaml"], 2, ["bad_arm_override.yaml", "arm 'a'", "not valid YAML"]),
    (["experiment", "{tmp}/bad_arm_override.yaml", "--collect"], 2, ["bad_arm_override.yaml", "arm 'a'", "not valid YAML"]),
    # a key given twice: refused with the file and the line, never kept once in silence
    (["config", "show", "{tmp}/duplicate_key.yaml"], 2, ["duplicate_key.yaml", "line 4", "'lr'", "line 3"]),
    (["experiment", "{tmp}/duplicate_arm.yaml", "--collect"], 2, ["duplicate_arm.yaml", "line 7", "'short'", "line 5"]),
    (["plan", "{tmp}/duplicate_arm.yaml"], 2, ["duplicate_arm.yaml", "line 7", "'short'"]),
    (["plan", "{tmp}/duplicate_base.yaml"], 2, ["duplicate_key.yaml", "line 4", "'lr'"]),
    # something that cannot be a run folder
    (["verify", "/"], 2, ["'/'", "does not name a run folder"]),
    (["status", "/"], 2, ["'/'", "does not name a run folder"]),
    (["resume", "/"], 2, ["'/'", "does not name a run folder"]),
    (["export", "/", "--to", "{tmp}/out"], 2, ["'/'", "does not name a run folder"]),
    (["verify", "memory://run"], 2, ["memory://run", "inside a runs root"]),
    (["export", "{tmp}/no-such-run", "--to", "{tmp}/out"], 2, ["no-such-run", "no steps.json"]),
]


def _filled(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{quickstart}", str(REPO / "configs/quickstart.yaml"))


@pytest.mark.parametrize(("argv", "code", "words"), HOSTILE_INPUTS, ids=[" ".join(r[0]) for r in HOSTILE_INPUTS])
def test_hostile_input_ends_with_one_line_and_a_usage_exit_code(argv, code, words, tmp_path, capsys):
    for name, text in FILES.items():
        (tmp_path / name).write_text(_filled(text, tmp_path), encoding="utf-8")
    assert main([_filled(a, tmp_path) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert all(_filled(w, tmp_path) in last for w in words), last
