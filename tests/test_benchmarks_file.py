"""`name: file` benchmarks: problems from a user's own file or Hub dataset, every format, dotted field
paths, numeric and multiple-choice answers, unusable records excluded with file, line and reason."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.benchmarks import BenchmarkError
from distill.choices import gold_answers
from distill.config import BenchmarkRef, ConfigError, load_config
from flows.cli import main
from flows.run_setup import run_layout
from tasks.jobs.benchmarks import load_problems
from tasks.pipeline import pipeline_steps

RECORDS = [
    {"uid": "q1", "meta": {"question": "Tom has 3 apples and buys 2 more. How many now?"},
     "solutions": ["3 + 2 = 5\n#### 5"]},
    {"uid": "q2", "meta": {"question": "A box holds 1,000 pens; 920 are sold. How many are left?"},
     "solutions": ["1000 - 920 = 80\n#### 80"]},
]
EXPECTED = [("mine/test/q1", 5.0, "5"), ("mine/test/q2", 80.0, "80")]


def ref(path: Path | str, **fields) -> BenchmarkRef:
    base = {"name": "file", "path": str(path), "question": "meta.question", "answer": "solutions.0",
            "id": "uid", "alias": "mine"}
    return BenchmarkRef(**(base | fields))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def flat(records: list) -> list[dict]:
    return [{"uid": r["uid"], "question": r["meta"]["question"], "answer": r["solutions"][0]} for r in records]


def write_in(fmt: str, folder: Path) -> tuple[Path, dict]:
    """RECORDS in one format; the field mapping that reads them (CSV is flat)."""
    if fmt == "jsonl":
        return write_jsonl(folder / "data.jsonl", RECORDS), {}
    if fmt == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
        return path, {}
    if fmt == "json-lines-named-json":
        return write_jsonl(folder / "data.json", RECORDS), {}
    if fmt == "jsonl.gz":
        path = folder / "data.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode()))
        return path, {}
    if fmt == "parquet":
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(RECORDS), path)  # nested: a struct and a list column
        return path, {}
    if fmt == "csv":
        import csv

        path = folder / "data.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["uid", "question", "answer"])
            writer.writeheader()
            writer.writerows(flat(RECORDS))  # the answers span two lines inside quotes
        return path, {"question": "question", "answer": "answer"}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "json-lines-named-json", "jsonl.gz", "parquet", "csv"])
def test_every_format_gives_the_same_problems(tmp_path, fmt):
    path, fields = write_in(fmt, tmp_path)
    loaded = load_problems(ref(path, **fields))
    assert [(p.id, p.answer, p.answer_text) for p in loaded.problems] == EXPECTED
    assert loaded.problems[0].question == RECORDS[0]["meta"]["question"]
    assert loaded.problems[0].benchmark == "mine" and loaded.exclusions == []


def test_an_fsspec_url_is_read_like_a_local_file():
    import fsspec

    with fsspec.open("memory://datasets/problems.jsonl", "w") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in RECORDS))
    loaded = load_problems(ref("memory://datasets/problems.jsonl"))
    assert [(p.id, p.answer) for p in loaded.problems] == [(i, a) for i, a, _ in EXPECTED]
    assert loaded.problems[0].source == "memory://datasets/problems.jsonl"


def test_dotted_paths_reach_nested_keys_list_items_and_keys_with_dots(tmp_path):
    record = {"a": {"b": [{"c": "What is 6 times 7?"}]}, "gold.value": "42", "steps": ["x", "6 * 7 = 42"]}
    path = write_jsonl(tmp_path / "nested.jsonl", [record])
    [problem] = load_problems(ref(path, question="a.b.0.c", answer="gold.value", id=None,
                                  rationale="steps.-1")).problems
    assert (problem.id, problem.question, problem.answer, problem.reference) == (
        "mine/test/0", "What is 6 times 7?", 42.0, "6 * 7 = 42")  # no id field: the record's position


@pytest.mark.parametrize("answer, value", [
    (7, 7.0), (2.5, 2.5), ("1,080", 1080.0), ("$5", 5.0), ("-3", -3.0), ("3/4", 0.75),
    ("( 84.0 / 2.0 )", 42.0), ("Natalia sold 48/2 = 24 clips.\n#### 72", 72.0),
])
def test_numeric_answers_as_numbers_numeric_strings_expressions_and_gsm8k_solutions(tmp_path, answer, value):
    path = write_jsonl(tmp_path / "n.jsonl", [{"q": "How many?", "a": answer}])
    [problem] = load_problems(ref(path, question="q", answer="a", id=None)).problems
    assert problem.answer == value


@pytest.mark.parametrize("choices, answer", [
    (["sky", "apple", "sea"], "B"),
    (["sky", "apple", "sea"], "(b)"),
    (["sky", "apple", "sea"], "b)"),
    (["sky", "apple", "sea"], "apple"),
    (["sky", "apple", "sea"], "Apple."),
    (["A) sky", "B) apple", "C) sea"], "B"),
    (["(A) sky", "(B) apple", "(C) sea"], "apple"),
    ({"label": ["A", "B", "C"], "text": ["sky", "apple", "sea"]}, "B"),  # CommonsenseQA on the Hub
    ('["sky", "apple", "sea"]', "B"),  # a JSON list in a CSV cell
])
def test_multiple_choice_answers_by_letter_or_by_text(tmp_path, choices, answer):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"q": "Which is red?", "options": choices, "gold": answer}])
    [problem] = load_problems(ref(path, question="q", answer="gold", id=None, choices="options")).problems
    assert problem.question == "Which is red?\nAnswer Choices:\n(a) sky\n(b) apple\n(c) sea"
    assert math.isnan(problem.answer) and problem.answer_text == "apple"
    gold, listed = gold_answers([problem.to_row()])  # what verification and evaluation compare
    assert gold[problem.id] == 1.0 and listed[problem.id] == ["sky", "apple", "sea"]


def test_one_field_per_choice_reads_a_csv_with_a_column_per_choice(tmp_path):
    path = tmp_path / "mmlu.csv"
    path.write_text("question,A,B,C,D,answer\nWhich is a prime?,4,6,7,9,C\n", encoding="utf-8")
    [problem] = load_problems(ref(path, question="question", answer="answer", id=None,
                                  choices=["A", "B", "C", "D"])).problems
    assert problem.answer_text == "7" and problem.question.endswith("(c) 7\n(d) 9")


def test_unusable_records_are_excluded_with_file_line_and_reason(tmp_path, capsys):
    lines = [json.dumps(RECORDS[0]), "", "{not json", json.dumps({"uid": "q3", "meta": {}}),
             json.dumps(RECORDS[0]), json.dumps({"uid": "q4", "meta": {"question": "Colour?"}, "solutions": ["blue"]}),
             json.dumps(["a", "list"]), json.dumps(RECORDS[1])]
    path = tmp_path / "messy.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_problems(ref(path))
    assert [p.id for p in loaded.problems] == ["mine/test/q1", "mine/test/q2"]
    details = [(e.reason, e.detail) for e in loaded.exclusions]
    assert details == [
        ("unreadable", f"{path}: line 3: invalid JSON (Expecting property name enclosed in double quotes, column 2)"),
        ("missing_field", f"{path}: line 4: no question field 'meta.question'"),
        ("duplicate_id", f"{path}: line 5: id 'mine/test/q1' was already used at {path}: line 1"),
        ("not_a_number", f"{path}: line 6: answer 'blue' is not a number"),
        ("not_a_record", f"{path}: line 7: a list, not a record with fields"),
    ]
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"q": "Which?", "o": ["x", "y"], "a": "z"},
                                             {"q": "Which?", "o": "x or y", "a": "x"}])
    reasons = [(e.reason, e.detail) for e in load_problems(ref(mc, question="q", answer="a", id=None,
                                                               choices="o")).exclusions]
    assert reasons == [("answer_not_a_choice", f"{mc}: line 1: answer 'z' names none of the choices by letter or text"),
                       ("bad_choices", f"{mc}: line 2: choices field 'o' should be a list of 2 to 10 texts")]


def test_files_that_cannot_be_read_at_all_fail_naming_the_file(tmp_path):
    with pytest.raises(BenchmarkError, match=r"missing\.jsonl: file not found"):
        load_problems(ref(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(BenchmarkError, match=r"data\.txt: unknown data format"):
        load_problems(ref(tmp_path / "data.txt"))
    (tmp_path / "broken.json").write_text('[\n{"uid": 1},\n{"uid": \n')
    with pytest.raises(BenchmarkError, match=r"broken\.json: invalid JSON on line 4"):
        load_problems(ref(tmp_path / "broken.json"))
    (tmp_path / "object.json").write_text('{\n"rows": []\n}\n')
    with pytest.raises(BenchmarkError, match=r"object\.json: expected a JSON array of records"):
        load_problems(ref(tmp_path / "object.json"))


def test_limit_and_seed_take_a_stable_subset(tmp_path):
    records = [{"q": f"What is {i} + 1?", "a": i + 1} for i in range(30)]
    path = write_jsonl(tmp_path / "many.jsonl", records)
    small = load_problems(ref(path, question="q", answer="a", id=None, limit=5, seed=3)).problems
    large = load_problems(ref(path, question="q", answer="a", id=None, limit=10, seed=3)).problems
    assert len(small) == 5 and {p.id for p in small} <= {p.id for p in large}


def test_config_mistakes_are_named():
    with pytest.raises(ValueError, match="needs question, answer"):
        BenchmarkRef(name="file", path="x.jsonl")
    with pytest.raises(ValueError, match="needs repo"):
        BenchmarkRef(name="file", source="hub", question="q", answer="a")
    with pytest.raises(ValueError, match="question: only for `name: file`"):
        BenchmarkRef(name="gsm8k", question="q")
    with pytest.raises(ValueError, match="alias 'gsm8k'"):
        BenchmarkRef(name="file", path="data/gsm8k.jsonl", question="q", answer="a")
    assert BenchmarkRef(name="file", path="s3://bucket/sets/my-set.jsonl.gz", question="q",
                        answer="a").benchmark_name == "my-set"
    with pytest.raises(ConfigError, match="multiple choice"):  # as dss_cqa: labels are choice texts
        load_config({"train_data": {"name": "file", "path": "mc.jsonl", "question": "q", "answer": "a",
                                    "choices": "o"}})


def test_a_file_benchmarks_step_key_follows_its_content_and_builtin_keys_hold_no_file_keys(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    overrides = [f"runs_root={tmp_path / 'runs'}", ("eval.benchmarks=[{name: arith, split: test, size: 3}, "
                 f"{{name: file, path: {path}, question: meta.question, answer: solutions.0, alias: mine}}]")]

    def steps():
        cfg = load_config({}, overrides)
        return pipeline_steps(cfg, run_layout(cfg))

    key = steps()["problems/eval-mine-test"].key
    assert key == steps()["problems/eval-mine-test"].key
    assert steps()["iter-00/evaluate"].inputs["problems:mine-test"] == "problems/eval-mine-test"
    write_jsonl(path, RECORDS[:1])
    assert steps()["problems/eval-mine-test"].key != key
    builtin = steps()["problems/eval-arith-test"].reads
    assert not {"path", "question", "alias", "file_sha256"} & (set(builtin["ref"]) | set(builtin))


def test_data_list_counts_a_configs_file_benchmark_and_names_its_excluded_records(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{oops\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"train_data: {{name: file, path: {path}, question: meta.question, answer: solutions.0, "
                      "split: train}\neval:\n  benchmarks: [{name: arith, split: test, size: 4}]\n")
    assert main(["data", "list", str(config), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["benchmarks"]
    assert [(r["role"], r["benchmark"], r["split"], r["loaded"], r["excluded"]) for r in rows] == [
        ("train_data", "mine", "train", 1, 1), ("eval", "arith", "test", 4, 0)]
    assert rows[0]["excluded_records"] == [(f"{path}: line 2: invalid JSON (Expecting property name enclosed "
                                           "in double quotes, column 2)")]


def test_siked_train_reads_a_files_rationale_field(tmp_path):
    from tasks.train_set import given_rationale_rows

    path = write_jsonl(tmp_path / "mine.jsonl", RECORDS + [{"uid": "q3", "meta": {"question": "2 + 2?"},
                                                            "solutions": [4]}])
    cfg = load_config({"train_data": {"name": "file", "path": str(path), "question": "meta.question",
                                      "answer": "solutions.0", "id": "uid", "rationale": "solutions.0",
                                      "split": "train"}})
    rows = given_rationale_rows(cfg.train_data, cfg.data_dir)
    assert [(r["question_id"], r["text"], r["gold"]) for r in rows] == [
        ("mine/train/q1", "3 + 2 = 5\nFinal answer: 5", 5.0),  # the text before `####`, then the gold
        ("mine/train/q2", "1000 - 920 = 80\nFinal answer: 80", 80.0)]  # q3's field is a number: no rationale


def test_a_hub_dataset_with_the_same_field_mapping_from_a_local_mirror(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    from tests.test_benchmarks_hub import parquet, readme

    repo = tmp_path / "mirror" / "someone" / "my-problems"
    parquet(repo / "main" / "test-00000-of-00001.parquet", RECORDS)
    readme(repo, "main", {"test": "main/test-*"})
    monkeypatch.setenv("SIKED_HUB_MIRROR", str(tmp_path / "mirror"))
    hub = BenchmarkRef(name="file", source="hub", repo="someone/my-problems", config="main", split="test",
                       question="meta.question", answer="solutions.0", id="uid")
    loaded = load_problems(hub)
    assert [(p.id, p.answer) for p in loaded.problems] == [("my-problems/test/q1", 5.0), ("my-problems/test/q2", 80.0)]
    assert loaded.source == "hf:someone/my-problems/main:test"


@pytest.mark.slow
def test_a_tiny_run_trains_on_a_file_and_evaluates_on_files(tmp_path, tiny_model_path, capsys):
    """Training problems from a JSON Lines file (one of them a prompt exemplar, one an evaluation
    question), evaluation on a Parquet file and a multiple-choice CSV: the exemplar is dropped, the
    planted overlap reported, and each file evaluated under its own name."""
    from distill.benchmarks import load_benchmark
    from distill.strategies.exemplars import EXEMPLARS
    from storage.artifacts import read_artifact
    from tests.test_flow import output_of

    arith = load_benchmark(BenchmarkRef(name="arith", split="train", size=6, seed=5), None).problems
    exemplar = EXEMPLARS[0]
    train = [{"id": f"t{i}", "problem": p.question, "gold": p.answer_text} for i, p in enumerate(arith)]
    train.append({"id": "leak", "problem": exemplar.question, "gold": "1"})
    write_jsonl(tmp_path / "train.jsonl", train)
    teacher = tmp_path / "rationales.jsonl"
    write_jsonl(teacher, [{"question_id": f"train/train/t{i}", "strategy": "cot",
                           "text": f"{p.reference.partition(chr(10) + 'The answer is')[0]}\nFinal answer: {p.answer:g}"}
                          for i, p in enumerate(arith)])
    pq.write_table(pa.Table.from_pylist([{"q": arith[0].question, "a": arith[0].answer},
                                         {"q": "What is 40 plus 2?", "a": 42}]), tmp_path / "numbers.parquet")
    (tmp_path / "colours.csv").write_text("question,A,B,answer\nWhich is red?,sky,apple,B\n"
                                          "Which is blue?,sky,apple,sky\n", encoding="utf-8")
    overrides = [
        f"runs_root={tmp_path / 'runs'}", "name=files",
        f"train_data={{name: file, path: {tmp_path / 'train.jsonl'}, question: problem, answer: gold, id: id, split: train}}",
        "teacher.engine.kind=file", f"teacher.engine.files=[{teacher}]", "teacher.strategies=[cot]",
        "teacher.sampling.n=1", "siked.iterations=0", "siked.engine.kind=transformers",
        "train.model=" + str(tiny_model_path), "train.max_steps=2", "train.batch_size=2",
        "train.lora.last_layers=null", "train.max_length=2048", "train.val_fraction=0",
        (f"eval.benchmarks=[{{name: file, path: {tmp_path / 'numbers.parquet'}, question: q, answer: a}}, "
        f"{{name: file, path: {tmp_path / 'colours.csv'}, question: question, answer: answer, choices: [A, B]}}]"),
        "eval.max_tokens=8", "eval.modes=[rationale]", "eval.decontamination.ngram=5",
    ]
    assert main(["run", "configs/quickstart.yaml", *overrides]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    problems = read_artifact(output_of(run, "problems/train", "problems"), "problems").to_pylist()
    assert sorted(p["id"] for p in problems) == sorted(f"train/train/t{i}" for i in range(6))  # exemplar dropped
    verified = read_artifact(output_of(run, "iter-00/verify", "verified"), "verified").to_pylist()
    assert sum(r["verdict"] == "correct" for r in verified) == 6  # the teacher's rationales, keyed by the file's ids
    overlaps = read_artifact(output_of(run, "problems/contamination", "overlaps"), "overlaps").to_pylist()
    assert {(o["benchmark"], o["question_id"], o["source_id"]) for o in overlaps
            if not o["source_id"].startswith("exemplar")} == {("numbers-test", "numbers/test/0", "train/train/t0")}
    for name, n in (("numbers-test", 2), ("colours-test", 2)):
        predictions = read_artifact(output_of(run, "iter-00/evaluate", f"{name}/rationale"), "predictions")
        assert predictions.num_rows == n
    assert "colours-test" in (run / "report" / "report.md").read_text()


BIG = "1" * 5001  # more digits than Python turns into an int


@pytest.mark.parametrize("name, text, where", [
    ("s.jsonl", '{"q": "Big?", "a": "1e999"}\n', "line 2"),  # a string: once "Invalid literal for Fraction: 'inf'"
    ("n.jsonl", '{"q": "Big?", "a": 1e999}\n', "line 2"),  # a JSON number: infinity as a float
    ("i.jsonl", f'{{"q": "Big?", "a": {BIG}}}\n', "line 2"),  # an int with more digits than Python converts
    ("d.jsonl", f'{{"q": "Big?", "a": "{BIG}"}}\n', "line 2"),
    ("e.jsonl", f'{{"q": "Big?", "a": "{"1" * 400}"}}\n', "line 2"),  # fits an int, not a float
])
def test_an_answer_no_float_can_hold_excludes_its_record_not_the_file(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text('{"q": "What is 2 + 3?", "a": 5}\n' + text, encoding="utf-8")
    loaded = load_problems(ref(path, question="q", answer="a", id=None))
    assert [p.answer for p in loaded.problems] == [5.0]
    [excluded] = loaded.exclusions
    assert excluded.reason == "not_finite"
    assert excluded.detail.startswith(f"{path}: {where}: answer '") and "is not a finite number" in excluded.detail
    assert len(excluded.detail) < 200  # a 5,001-digit answer is shortened in the message


def test_huge_numbers_in_json_arrays_and_csv_are_excluded_by_record(tmp_path):
    array = tmp_path / "data.json"
    array.write_text(f'[{{"q": "What is 2 + 3?", "a": 5}}, {{"q": "Big?", "a": {BIG}, "id": {BIG}}}]', encoding="utf-8")
    table = tmp_path / "data.csv"
    table.write_text(f"q,a\nWhat is 2 + 3?,5\nBig?,{BIG}\nHuge?,1e999\n", encoding="utf-8")
    for path, wheres in ((array, ["record 2"]), (table, ["line 3", "line 4"])):
        loaded = load_problems(ref(path, question="q", answer="a", id=None))
        assert len(loaded.problems) == 1
        assert [(e.reason, e.detail.split(": answer")[0]) for e in loaded.exclusions] == [
            ("not_finite", f"{path}: {where}") for where in wheres]


def test_a_line_nested_too_deeply_is_excluded_by_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"q": "What is 2 + 3?", "a": 5}\n' + "[" * 100_000 + "\n", encoding="utf-8")
    loaded = load_problems(ref(path, question="q", answer="a", id=None))
    assert len(loaded.problems) == 1
    assert [(e.reason, e.detail) for e in loaded.exclusions] == [
        ("unreadable", f"{path}: line 2: invalid JSON (nested too deeply)")]


@pytest.mark.parametrize("name, text, mapping, why", [
    ("wrong.jsonl", '{"q": "What is 2 + 3?", "a": 5}\n' * 3, {"answer": "meta.gold"},
     "wrong.jsonl: no answer field 'meta.gold' in any of its 3 records (is the field's path right?)"),
    ("wrong.csv", "q,a\nWhat is 2 + 3?,5\n", {"question": "question"},
     "wrong.csv: no question field 'question' in its one record (is the field's path right?)"),
    ("colours.jsonl", '{"q": "Colour?", "a": "blue"}\n{"a": 1}\n', {},
     ("colours.jsonl: no usable record, 2 excluded (missing_field: 1, not_a_number: 1); "
      "the first: line 1: answer 'blue' is not a number")),
    ("blank.jsonl", "\n\n", {}, "blank.jsonl: holds no records"),
])
def test_a_file_with_no_usable_record_says_why(tmp_path, name, text, mapping, why):
    """The field that matched nothing is named; a file left empty by its exclusions is not
    reported as emptied by the exemplar filter (as `siked eval` once did)."""
    from prefect.logging import disable_run_logger

    from tasks.problems import freeze_problems

    (tmp_path / name).write_text(text, encoding="utf-8")
    set_ref = ref(tmp_path / name, **({"question": "q", "answer": "a", "id": None} | mapping))
    assert load_problems(set_ref).why_no_problem() == f"{tmp_path}/{why}"
    with disable_run_logger(), pytest.raises(BenchmarkError) as err:
        freeze_problems.fn(set_ref, "eval-mine-test", str(tmp_path / "out" / "problems.parquet"), "k")
    assert str(err.value) == f"{tmp_path}/{why}"
    assert not (tmp_path / "out").exists()


def test_preflight_reads_a_file_benchmark_and_names_its_set(tmp_path):
    from flows.commands.preflight import preflight

    path = write_jsonl(tmp_path / "mine.jsonl", RECORDS)
    sets = (f"eval.benchmarks=[{{name: arith, size: 3}}, {{name: file, path: {path}, question: meta.question, "
            "answer: meta.gold}]")
    with pytest.raises(ConfigError, match=r"^eval\.benchmarks\.1: .*mine\.jsonl: no answer field 'meta\.gold' in any "
                                          "of its 2 records"):
        preflight(load_config({}, [sets]))
    preflight(load_config({}, [sets.replace("meta.gold", "solutions.0")]))
