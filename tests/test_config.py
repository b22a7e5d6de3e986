"""Config: YAML + overrides -> typed objects; unknown keys fail with path and suggestion."""

from pathlib import Path

import pytest

from distill.config import ConfigError, RunConfig, load_config, section_hash, to_yaml
from flows.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate():
    cfg = load_config("")
    assert isinstance(cfg, RunConfig)
    assert cfg.train.loss.kind == "dss_mi" and cfg.train.loss.alpha == 0.5 and cfg.train.loss.beta == 0.1
    assert cfg.teacher.strategies == ["cot", "l2m", "pot"]


def test_yaml_and_overrides_apply_in_order():
    cfg = load_config("teacher:\n  sampling:\n    n: 4\n", ["teacher.sampling.n=2", "train.lora.enabled=false"])
    assert cfg.teacher.sampling.n == 2
    assert cfg.train.lora.enabled is False


def test_override_values_are_parsed_as_yaml():
    cfg = load_config("", ["teacher.strategies=[cot, pot]", "siked.alpha_schedule=[0.8, 0.3]"])
    assert cfg.teacher.strategies == ["cot", "pot"]
    assert cfg.siked.alpha_schedule == [0.8, 0.3]


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config("", ["teacher.sampling.temprature=0.5"])
    text = str(err.value)
    assert "teacher.sampling.temprature" in text
    assert "teacher.sampling.temperature" in text  # the suggestion


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="did you mean 'teacher'"):
        load_config("teachr: {}\n")


def test_mistyped_value_names_key():
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config("", ["train.batch_size=many"])


def test_bad_literal_rejected():
    with pytest.raises(ConfigError, match="teacher.strategies"):
        load_config("", ["teacher.strategies=[cot, tot]"])


def test_malformed_override_and_yaml():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("", ["teacher.sampling.n"])
    with pytest.raises(ConfigError, match="my.yaml: not valid YAML"):
        load_config("a: [", source="my.yaml")


def test_section_hash_is_stable_and_sensitive():
    a = load_config("")
    b = load_config("", ["train.lr=0.0002"])  # same value spelled differently
    c = load_config("", ["train.lr=0.0003"])
    assert section_hash(a.train) == section_hash(b.train)
    assert section_hash(a.train) != section_hash(c.train)
    assert section_hash(a.teacher) == section_hash(c.teacher)  # other sections unaffected


def test_resolved_yaml_round_trips():
    cfg = load_config("", ["teacher.sampling.n=3"])
    again = load_config(to_yaml(cfg))
    assert again == cfg


def test_every_shipped_config_validates():
    from flows.commands.config_files import read_config

    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "configs/ should hold at least the quickstart"
    for path in configs:
        read_config(path)


def test_configs_claiming_the_siked_reference_pack_its_rows():
    """SIKeD's reference trains on packed 1,024-token rows; the paper configs and the GPU experiments
    built on them say so (they plan: test_every_shipped_config_plans, test_experiment)."""
    from flows.commands.config_files import read_config
    from flows.experiment_file import read_experiment

    for path in sorted((REPO / "configs").glob("paper_gsm8k_*.yaml")):
        train = read_config(path).train
        assert (train.packing, train.max_length, train.batch_size, train.epochs) == (True, 1024, 8, 3), path
    for name in ("siked_vs_single_pass", "mixing"):
        for run in read_experiment(REPO / "experiments/gpu" / f"{name}.yaml").runs:
            assert run.cfg.train.packing, (name, run.arm)


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 3\n")
    assert main(["config", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.batchsize" in err and "train.batch_size" in err and "bad.yaml" in err


def test_every_shipped_config_passes_preflight(data_dir):
    """Paper-scale GPU configs validate here too (model names are Hub ids, data from the data folder)."""
    from flows.commands.config_files import read_config
    from flows.commands.preflight import preflight

    for path in sorted((REPO / "configs").glob("*.yaml")):
        preflight(read_config(path))


def test_every_shipped_config_plans(data_dir, tmp_path, capsys, monkeypatch):
    """`siked plan` on each config, the paper-scale GPU ones and the GPU smoke run included."""
    monkeypatch.setenv("SIKED_HOME", str(tmp_path))
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert main(["plan", str(path)]) == 0, path
        assert "steps to run" in capsys.readouterr().out.splitlines()[-1], path


def test_tensorboard_option_without_the_package_fails_before_training(monkeypatch, tmp_path, capsys):
    """train.tensorboard=true on an install without tensorboard: a config error naming the key,
    raised before any data is read or any model loaded (it once failed inside the training child)."""
    import importlib.util

    from distill.config import ConfigError
    from flows.commands.train_cli import run_train_cli

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    config = tmp_path / "c.yaml"
    config.write_text("name: tb\n")
    with pytest.raises(ConfigError, match=r"train\.tensorboard.*not installed"):
        run_train_cli(str(config), [f"runs_root={tmp_path / 'runs'}", "train.tensorboard=true",
                                    f"train_set={tmp_path / 'missing.parquet'}"])
    assert not (tmp_path / "runs").exists()


def test_replicas_of_a_remote_or_file_engine_are_refused_up_front(tmp_path):
    from distill.config import ConfigError
    from flows.commands.config_files import read_config
    from flows.commands.preflight import preflight

    config = REPO / "configs" / "quickstart.yaml"
    cfg = read_config(config, ["teacher.engine.kind=openai", "teacher.engine.base_url=http://127.0.0.1:9/v1",
                               "teacher.engine.replicas=2"])
    with pytest.raises(ConfigError, match=r"teacher\.engine\.replicas"):
        preflight(cfg)
    preflight(read_config(config, ["teacher.engine.replicas=2"]))  # vllm replicas are fine


def test_overrides_may_follow_an_option():
    """`siked eval MODEL --config C k=v` once failed with `unrecognized arguments: k=v`."""
    from flows.cli import build_parser, parse_arguments

    args = parse_arguments(build_parser(), ["eval", "model-dir", "--config", "c.yaml", "eval.max_tokens=8", "seed=3"])
    assert (args.model, args.config, args.overrides) == ("model-dir", "c.yaml", ["eval.max_tokens=8", "seed=3"])
    with pytest.raises(SystemExit):
        parse_arguments(build_parser(), ["eval", "model-dir", "--config", "c.yaml", "--bogus"])


@pytest.mark.parametrize("override, field, words", [
    ('eval.benchmarks=[{name: arith, split: "x/../../out/pwned"}]', "eval.benchmarks.0.split", "'/'"),
    ('eval.benchmarks=[{name: arith, split: ".."}]', "eval.benchmarks.0.split", "'..'"),
    ('eval.benchmarks=[{name: arith, split: ""}]', "eval.benchmarks.0.split", "empty"),
    ('train_data={name: arith, split: "tr\\0ain"}', "train_data.split", "NUL"),
    ('eval.benchmarks=[{name: file, path: d.jsonl, question: q, answer: a, alias: "a\\0b"}]',
     "eval.benchmarks.0", "alias"),
    ('eval.benchmarks=[{name: file, path: d.jsonl, question: q, answer: a, alias: "a..b"}]',
     "eval.benchmarks.0", "alias"),
    ('name="run\\0x"', "name", "NUL"),
    ("name=a..b", "name", "'..'"),
])
def test_names_that_become_paths_must_be_plain(override, field, words):
    """A split, alias or run name becomes part of a path: `/`, `..`, NUL or nothing is refused at
    load, in one line naming the key (a split once wrote an evaluation file outside the home)."""
    with pytest.raises(ConfigError) as err:
        load_config("", [override], source="c.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("c.yaml: invalid configuration: ")
    assert f"{field}:" in message and words in message


@pytest.mark.parametrize("sets, label", [
    ([{"name": "arith", "split": "test", "size": 3}, {"name": "arith", "split": "test", "size": 5}], "arith-test"),
    ([{"name": "file", "path": "a/questions.json", "question": "q", "answer": "a"},
      {"name": "file", "path": "b/data.jsonl", "question": "q", "answer": "a", "alias": "questions"}], "questions-test"),
    ([{"name": "gsm8k", "split": "test"}, {"name": "arith", "label": "gsm8k-test"}], "gsm8k-test"),
])
def test_two_evaluation_sets_under_one_label_are_refused_naming_both(sets, label):
    """Steps and prediction files are named by the label: the second set once replaced the first."""
    with pytest.raises(ConfigError) as err:
        load_config({"eval": {"benchmarks": [{"name": "arith", "label": "other"}, *sets]}})
    assert f"eval.benchmarks.1 and eval.benchmarks.2 are both evaluated as {label!r}" in str(err.value)


def test_a_label_names_the_evaluation_set_and_an_unset_one_changes_no_key(tmp_path):
    from flows.run_setup import run_id, run_layout
    from tasks.pipeline import pipeline_steps

    sets = [{"name": "arith", "split": "test", "size": 3},
            {"name": "file", "path": "d/questions.json", "question": "q", "answer": "a"}]
    # pinned: the id moves when a config field is added (given_rationales, self_generation, schedule_across_rounds,
    # the token_level section, its training fields and guards)
    # or a default changes (eval.label_max_tokens, set here to its old value), never for an unset label
    plain = load_config({"name": "pinned", "eval": {"benchmarks": sets, "label_max_tokens": 16}})
    assert run_id(plain) == "pinned-1d96e7843e"
    import yaml

    assert "label" not in plain.eval.benchmarks[1].model_dump()
    assert "label" not in yaml.safe_load(to_yaml(plain))["eval"]["benchmarks"][1]
    assert [ref.eval_label for ref in plain.eval.benchmarks] == ["arith-test", "questions-test"]

    labelled = load_config({"runs_root": str(tmp_path), "eval": {"benchmarks": [sets[0], sets[1] | {"label": "addsub"}]}})
    steps = pipeline_steps(labelled, run_layout(labelled))
    assert "problems/eval-addsub" in steps and "problems/eval-questions-test" not in steps
    assert {"addsub/rationale", "addsub/label"} <= set(steps["iter-00/evaluate"].outputs)
    assert steps["iter-00/evaluate"].output("addsub/rationale").endswith("/addsub-rationale.parquet")
    with pytest.raises(ConfigError, match="train_data.label: only evaluation sets"):
        load_config({"train_data": {"name": "arith", "split": "train", "label": "x"}})
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\.0\.label: .*holds '/'"):
        load_config({"eval": {"benchmarks": [{"name": "arith", "label": "a/b"}]}})
def test_a_key_given_twice_is_refused_with_both_lines():
    text = "name: a\ntrain:\n  lr: 0.001\n  lora: {enabled: true, enabled: false}\n"
    with pytest.raises(ConfigError, match=r"my.yaml: not valid YAML: line 4, .*'enabled' repeats the one on line 4"):
        load_config(text, source="my.yaml")
    with pytest.raises(ConfigError, match="'name' repeats the one on line 1"):
        load_config("name: a\nseed: 1\nname: b\n")


def test_a_merged_mapping_may_still_be_overridden():
    from distill.strict_yaml import load_yaml

    assert load_yaml("base: &b {lr: 1, seed: 2}\nrun:\n  <<: *b\n  lr: 3\n")["run"] == {"lr": 3, "seed": 2}


@pytest.mark.parametrize(("overrides", "words"), [
    (["train.schedule_across_rounds=continue"], "needs train.max_steps"),
    (["train.schedule_across_rounds=continue", "train.max_steps=4", "train.continue_from_previous=false"],
     "needs train.continue_from_previous=true"),
])
def test_one_schedule_across_rounds_needs_rounds_of_known_length_from_the_previous_student(overrides, words):
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match=words):
        load_config("", overrides)


def test_one_schedule_across_rounds_gives_each_training_its_round(tmp_path):
    from flows.run_setup import run_layout
    from tasks.pipeline import pipeline_steps

    def trainings(*overrides: str) -> dict[str, object]:
        cfg = load_config("", [f"runs_root={tmp_path}", "siked.iterations=2", "train.max_steps=4", *overrides])
        steps = pipeline_steps(cfg, run_layout(cfg))
        return {n: s for n, s in steps.items() if s.kind == "train"}

    restart = trainings()
    assert all("schedule_round" not in s.job for s in restart.values())
    one = trainings("train.schedule_across_rounds=continue")
    assert [one[n].job["schedule_round"] for n in sorted(one)] == [(0, 3), (1, 3), (2, 3)]
    longer = trainings("train.schedule_across_rounds=continue", "siked.iterations=3")
    assert all(longer[n].key != one[n].key for n in one)  # a longer schedule changes every round's rates
