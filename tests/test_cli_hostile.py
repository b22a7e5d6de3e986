"""Hostile and broken input through the `siked` command line: each row is refused before any work
with one error line naming the file, line or field (exit code 2), or, where the input is one bad
record among good ones, the record is excluded with its file, line and reason (exit code 0).

A row is `(argv, files, exit code, words)`: `files` are written into the test's folder first, and
`$TMP` in `argv` and in the files' text stands for that folder. With a non-zero exit code, standard
error holds exactly one line and every word is on it; with 0, the words are on one line of the
output. No row may write anything named `pwned*` anywhere in the test's folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main

MODEL = "builtin:smollm2-135m-instruct"
GOOD = '{"q": "What is 2 + 3?", "a": 5}\n'


def config(*eval_sets: str, name: str = "hostile") -> str:
    """A run config whose evaluation sets are `eval_sets` (YAML flow mappings)."""
    sets = "".join(f"    - {s}\n" for s in eval_sets)
    return (f"name: {name}\nruns_root: $TMP/runs\ntrain_data: {{name: arith, split: train, size: 4}}\n"
            f"eval:\n  benchmarks:\n{sets}")


def file_set(**fields: str) -> str:
    """A `name: file` set reading data.jsonl (question `q`, answer `a`), with `fields` added or replaced."""
    mapping = {"name": "file", "path": "$TMP/data.jsonl", "question": "q", "answer": "a"} | fields
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


# A split that climbs out of the step folder and lands in $TMP/out (the file was once written there).
ESCAPE = '"x/' + "../" * 24 + '$TMP/out/pwned"'
ESCAPING_SPLIT = {"c.yaml": config(file_set(split=ESCAPE)), "data.jsonl": GOOD}
WRONG_ANSWER_PATH = {"c.yaml": config(file_set(answer="meta.gold")), "data.jsonl": GOOD * 3}
BIG = "1" * 5001  # more digits than Python turns into an int

HOSTILE_INPUTS: list[tuple[tuple[str, ...], dict[str, str], int, tuple[str, ...]]] = [
    # Names that become part of a path: a plain name, else refused at config load with the field named.
    (("plan", "$TMP/c.yaml"), ESCAPING_SPLIT, 2, ("c.yaml", "eval.benchmarks.0.split", "'/'")),
    (("data", "list", "$TMP/c.yaml"), ESCAPING_SPLIT, 2, ("eval.benchmarks.0.split", "'/'")),
    (("eval", MODEL, "--config", "$TMP/c.yaml"), ESCAPING_SPLIT, 2, ("eval.benchmarks.0.split", "'/'")),
    (("run", "$TMP/c.yaml"), ESCAPING_SPLIT, 2, ("eval.benchmarks.0.split", "'/'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(split='".."')), "data.jsonl": GOOD}, 2,
     ("eval.benchmarks.0.split", "'..'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(split='"te\\0st"')), "data.jsonl": GOOD}, 2,
     ("eval.benchmarks.0.split", "NUL")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config('{name: arith, split: "../../pwned"}')}, 2,
     ("eval.benchmarks.0.split", "'/'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(label='"../pwned"')), "data.jsonl": GOOD}, 2,
     ("eval.benchmarks.0.label", "'/'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(label='""')), "data.jsonl": GOOD}, 2,
     ("eval.benchmarks.0.label", "empty")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(alias='"../pwned"')), "data.jsonl": GOOD}, 2,
     ("eval.benchmarks.0", "alias '../pwned'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(alias='"my\\0set"')), "data.jsonl": GOOD}, 2,
     ("eval.benchmarks.0", "alias")),
    (("plan", "$TMP/c.yaml", 'name="run\\0name"'), {"c.yaml": config(file_set()), "data.jsonl": GOOD}, 2,
     ("name", "run name")),
    # Two evaluation sets under one label: refused, both named, rather than one silently dropped.
    (("plan", "$TMP/c.yaml"),
     {"c.yaml": config("{name: arith, split: test, size: 3}", "{name: arith, split: test, size: 5}")}, 2,
     ("eval.benchmarks.0", "eval.benchmarks.1", "arith-test")),
    (("data", "list", "$TMP/c.yaml"),
     {"c.yaml": config(file_set(path="$TMP/a/mine.jsonl"), file_set(path="$TMP/b/mine.jsonl")),
      "a/mine.jsonl": GOOD, "b/mine.jsonl": GOOD}, 2,
     ("eval.benchmarks.0", "eval.benchmarks.1", "mine-test")),
    (("plan", "$TMP/c.yaml"),
     {"c.yaml": config(file_set(path="$TMP/a/test.json"), file_set(path="$TMP/b/test.json", label="aqua")),
      "a/test.json": GOOD, "b/test.json": GOOD}, 0, ("problems/eval-aqua",)),
    # One unusable answer among good records: that record is excluded, with its file, line and reason.
    (("data", "list", "$TMP/c.yaml"), {"c.yaml": config(file_set()), "data.jsonl": GOOD + '{"q": "Big?", "a": "1e999"}\n'},
     0, ("data.jsonl: line 2", "1e999", "not a finite number")),
    (("data", "list", "$TMP/c.yaml"), {"c.yaml": config(file_set()), "data.jsonl": GOOD + '{"q": "Big?", "a": 1e999}\n'},
     0, ("data.jsonl: line 2", "1e999", "not a finite number")),
    (("data", "list", "$TMP/c.yaml"), {"c.yaml": config(file_set()), "data.jsonl": GOOD + f'{{"q": "Big?", "a": {BIG}}}\n'},
     0, ("data.jsonl: line 2", "11111", "5001 characters", "not a finite number")),
    (("data", "list", "$TMP/c.yaml"),
     {"c.yaml": config(file_set(path="$TMP/data.json")), "data.json": f'[{GOOD}, {{"q": "Big?", "a": "{BIG}"}}]'},
     0, ("data.json: record 2", "not a finite number")),
    (("data", "list", "$TMP/c.yaml"),
     {"c.yaml": config(file_set(path="$TMP/data.csv")), "data.csv": f"q,a\nWhat is 2 + 3?,5\nBig?,{BIG}\n"},
     0, ("data.csv: line 3", "not a finite number")),
    (("data", "list", "$TMP/c.yaml"), {"c.yaml": config(file_set()), "data.jsonl": GOOD + "[" * 100_000 + "\n"},
     0, ("data.jsonl: line 2", "nested")),
    # A set with no usable record: an error before any work, naming the field that matched nothing.
    (("data", "list", "$TMP/c.yaml"), WRONG_ANSWER_PATH, 2, ("data.jsonl", "no answer field 'meta.gold'", "3 records")),
    (("plan", "$TMP/c.yaml"), WRONG_ANSWER_PATH, 2, ("data.jsonl", "no answer field 'meta.gold'")),
    (("run", "$TMP/c.yaml"), WRONG_ANSWER_PATH, 2, ("data.jsonl", "no answer field 'meta.gold'")),
    (("eval", MODEL, "--config", "$TMP/c.yaml"), WRONG_ANSWER_PATH, 2, ("data.jsonl", "no answer field 'meta.gold'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set(question="question")), "data.jsonl": GOOD}, 2,
     ("data.jsonl", "no question field 'question'")),
    (("run", "$TMP/c.yaml"), {"c.yaml": config(file_set(path="$TMP/data.csv", answer="answer")),
                              "data.csv": "q,a\nWhat is 2 + 3?,5\n"}, 2, ("data.csv", "no answer field 'answer'")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set()), "data.jsonl": '{"q": "Colour?", "a": "blue"}\n'}, 2,
     ("data.jsonl", "not_a_number", "line 1: answer 'blue' is not a number")),
    (("plan", "$TMP/c.yaml"), {"c.yaml": config(file_set()), "data.jsonl": "\n"}, 2, ("data.jsonl", "no records")),
]


def _ids() -> list[str]:
    return [f"{i:02d}-{' '.join(argv[:2])}" for i, (argv, *_rest) in enumerate(HOSTILE_INPUTS)]


@pytest.mark.parametrize("argv, files, code, words", HOSTILE_INPUTS, ids=_ids())
def test_hostile_input(tmp_path, capsys, monkeypatch, argv, files, code, words):
    monkeypatch.setenv("SIKED_HOME", str(tmp_path / "home"))
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("$TMP", str(tmp_path)), encoding="utf-8")
    assert main([arg.replace("$TMP", str(tmp_path)) for arg in argv]) == code
    out, err = capsys.readouterr()
    if code:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
    else:
        lines = out.splitlines() + err.splitlines()
    assert any(all(word in line for word in words) for line in lines), (words, out, err)
    assert not [str(p) for p in Path(tmp_path).rglob("pwned*")]
