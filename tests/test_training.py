"""The training loop on a tiny two-layer Llama: learning, LoRA merging, checkpoints and resuming,
two processes against one, and the `siked train` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.config import TrainConfig
from distill.training import checkpoint as ckpt
from distill.training.loop import LoopOptions, train_student
from tests.test_training_data import make_rows


def tiny_cfg(**changes) -> TrainConfig:
    """Small and fast: short sequences, a few steps, validation on 20% of the questions."""
    base = {"model": "tiny", "max_length": 160, "batch_size": 4, "warmup_steps": 1, "max_steps": 6,
            "checkpoint_every": 3, "val_fraction": 0.2, "lr": 2e-3, "seed": 42, "val_max_tokens": 8}
    base.update(changes)
    loss = base.pop("loss", {"kind": "dss_mi"})
    lora = base.pop("lora", {"enabled": True, "r": 8, "alpha": 16})
    return TrainConfig(loss=loss, lora=lora, **base)


def train_losses(metrics: list[dict]) -> list[float]:
    return [m["loss"] for m in metrics if m["split"] == "train"]


def quiet(**changes) -> LoopOptions:
    return LoopOptions(**{"log_every": 100, "val_accuracy_limit": 4, "label_max_tokens": 4, **changes})


@pytest.mark.slow
def test_loss_falls_over_30_steps_and_parameters_change(tiny_model_path, tmp_path):
    import torch
    from safetensors.torch import load_file

    cfg = tiny_cfg(lora={"enabled": False}, max_steps=30, checkpoint_every=30, lr=1e-3, eval_every=15)
    result = train_student(cfg, make_rows(24, words=2), str(tiny_model_path), tmp_path / "out", tmp_path / "ckpt",
                           quiet())
    losses = train_losses(result.metrics)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    for row in result.metrics:
        assert set(row) == {"step", "epoch", "split", "loss", "loss_label", "loss_rationale", "loss_mi",
                            "loss_divergence", "lr",
                            "grad_norm", "tokens", "seconds", "val_accuracy"}
    train_rows = [m for m in result.metrics if m["split"] == "train"]
    assert all(m["loss_mi"] > 0 and m["tokens"] > 0 and m["grad_norm"] > 0 for m in train_rows)
    val_rows = [m for m in result.metrics if m["split"] == "val"]
    assert [m["step"] for m in val_rows] == [15, 30] and all(0 <= m["val_accuracy"] <= 1 for m in val_rows)
    assert result.best_step in (15, 30)
    assert result.best_val["metric"] == "rationale accuracy"
    assert result.best_val["val_questions"] == min(4, result.data_report["val_questions"])  # val_accuracy_limit 4
    assert result.data_report["val_questions"] > 0 and result.data_report["dropped_total"] == 0
    before = load_file(Path(tiny_model_path) / "model.safetensors")
    after = load_file(Path(result.output_dir) / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2


def test_merged_lora_gives_the_adapters_logits(tiny_model_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.config import LoraConfig
    from distill.training.lora import export_student, merged_model, wrap_lora
    from distill.training.student import trainable_state

    lora = LoraConfig(r=4, alpha=8)
    model = wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a fresh adapter is zero: give it something to merge
                p.normal_(std=0.05)
    model.eval()
    x = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        adapter = model(input_ids=x).logits
        state = trainable_state(model, fsdp=False)
        merged = merged_model(model)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=x).logits, adapter, atol=1e-5, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
        assert not torch.allclose(base(input_ids=x).logits, adapter, atol=1e-3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    folder = export_student(str(tiny_model_path), lora, state, tokenizer, tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, adapter, atol=1e-5, rtol=1e-4)
    assert (folder / "tokenizer.json").is_file() and not (folder / "adapter_config.json").exists()


def test_lora_on_the_last_layers_only_trains_those_and_skips_the_rest_of_the_backward(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import LoraConfig
    from distill.training.lora import wrap_lora

    model = wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                      LoraConfig(r=4, alpha=8, last_layers=1))
    layers = model.config.num_hidden_layers
    adapted = {int(n.split("layers.")[1].split(".")[0]) for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {layers - 1}
    seen = []  # hidden states that reach a decoder layer with a gradient to compute
    for i, layer in enumerate(model.base_model.model.model.layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, args[0].requires_grad)))
    model(input_ids=torch.randint(0, 1000, (1, 8))).logits.sum().backward()
    assert dict(seen) == {i: False for i in range(layers)}  # frozen below: no backward through them
    everywhere = wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                           LoraConfig(r=4, alpha=8))
    seen.clear()
    for i, layer in enumerate(everywhere.base_model.model.model.layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, args[0].requires_grad)))
    everywhere(input_ids=torch.randint(0, 1000, (1, 8)))
    assert dict(seen)[layers - 1]  # with every layer adapted the gradient flows down through them
    with pytest.raises(ValueError, match="last_layers"):
        wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path), LoraConfig(last_layers=layers + 1))


@pytest.mark.slow
def test_resumed_run_matches_the_uninterrupted_one(tiny_model_path, tmp_path):
    """Killed after step 4 (newest checkpoint: step 3), resumed: steps 4 to 8 as if never stopped.
    The InfoNCE heads, gradient accumulation and the epoch boundary all cross the interruption."""
    cfg = tiny_cfg(max_steps=8, grad_accum=2, loss={"kind": "dss_infonce", "infonce_dim": 16}, eval_every=4)
    rows = make_rows(20, words=2)
    whole = train_student(cfg, rows, str(tiny_model_path), tmp_path / "a-out", tmp_path / "a-ckpt", quiet())

    ckpt_dir = tmp_path / "b-ckpt"
    first = train_student(cfg, rows, str(tiny_model_path), tmp_path / "b-out", ckpt_dir,
                          quiet(stop_after_step=4))
    assert first.output_dir is None and ckpt.latest_checkpoint(ckpt_dir).name == "step-00000003"
    state = ckpt.load_state(ckpt.latest_checkpoint(ckpt_dir))
    assert state["step"] == 3 and {"epoch", "batch_index", "order_seed"} <= set(state)
    second = train_student(cfg, rows, str(tiny_model_path), tmp_path / "b-out", ckpt_dir, quiet())

    expected, got = train_losses(whole.metrics), train_losses(second.metrics)
    assert len(expected) == len(got) == 8  # the resumed log holds each step once
    for a, b in zip(expected, got):
        assert abs(a - b) < 1e-4, (expected, got)
    assert [m["step"] for m in second.metrics] == [m["step"] for m in whole.metrics]
    assert second.best_val == pytest.approx(whole.best_val)


def test_checkpoints_are_complete_or_invisible(tmp_path):
    folder = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 5), {"w.pt": {"a": 1}}, {"step": 5})
    assert ckpt.latest_checkpoint(tmp_path) == folder
    broken = ckpt.step_dir(tmp_path, 9)
    broken.mkdir()  # a write killed after the rename, before its marker
    (tmp_path / ".step-00000010.tmp").mkdir()  # a write killed midway
    assert ckpt.latest_checkpoint(tmp_path) == folder
    ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 9), {"w.pt": {"a": 2}}, {"step": 9})
    assert ckpt.load_file(ckpt.latest_checkpoint(tmp_path), "w.pt") == {"a": 2}
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000009"]


@pytest.mark.parametrize("kind", ["dss_mi", "dss_infonce"])
def test_packing_trains_the_per_example_mi_losses(kind, tiny_model_path, tmp_path):
    cfg = tiny_cfg(packing=True, loss={"kind": kind}, max_steps=2, val_fraction=0.0, max_length=512)
    result = train_student(cfg, make_rows(16, words=2), str(tiny_model_path), tmp_path / "o", tmp_path / "c",
                           quiet())
    assert result.data_report["packing"] and result.data_report["units"] < 12
    assert all(m["loss_mi"] > 0 for m in result.metrics if m["split"] == "train")


def first_step_mi(cfg: TrainConfig, rows: list[dict], model: str, work: Path) -> float:
    result = train_student(cfg, rows, model, work / "o", work / "c", quiet(stop_after_step=1))
    return next(m["loss_mi"] for m in result.metrics if m["split"] == "train")


def test_infonce_scores_against_the_whole_step_under_gradient_accumulation(tiny_model_path, tmp_path):
    """At step 1 (same parameters) the InfoNCE of 2 micro-batches of 2 is the InfoNCE of one
    batch of 4: each micro-batch scores its examples against all 4."""
    rows = make_rows(8, seed=5)
    cfg = {"loss": {"kind": "dss_infonce"}, "val_fraction": 0.0, "max_steps": 1}
    whole = first_step_mi(tiny_cfg(**cfg), rows, str(tiny_model_path), tmp_path / "whole")
    accumulated = first_step_mi(tiny_cfg(grad_accum=2, **cfg), rows, str(tiny_model_path), tmp_path / "accum")
    assert accumulated == pytest.approx(whole, rel=1e-5)
    assert whole > 0


def rows_of_questions_with_several_solutions() -> list[dict]:
    """8 rows: 4 questions with 1, 2, 3 and 2 kept solutions (strategies), label tasks identical within one."""
    rows = []
    for row, k in zip(make_rows(4, seed=7), [1, 2, 3, 2], strict=True):
        rows += [dict(row, strategy=s, text=f"{s} {row['text']}") for s in ("cot", "l2m", "pot")[:k]]
    return rows


def first_step(cfg: TrainConfig, rows: list[dict], model: str, work: Path) -> dict:
    result = train_student(cfg, rows, model, work / "o", work / "c", quiet(stop_after_step=1))
    return next(m for m in result.metrics if m["split"] == "train")


def test_a_steps_loss_and_gradient_do_not_depend_on_its_micro_batches(tiny_model_path, tmp_path):
    """One optimizer step of 8 rows (questions weighted 1/k per label row) as 1 micro-batch of 8,
    4 of 2 and 8 of 1: the same loss terms and gradient norm. Each micro-batch's loss is its share
    of the step's token means, so the label weights are not renormalised per micro-batch (at
    micro-batch 1 they used to have no effect) and a short rationale does not weigh more for being
    alone in its micro-batch."""
    rows = rows_of_questions_with_several_solutions()
    steps = {accum: first_step(tiny_cfg(batch_size=8, grad_accum=accum, val_fraction=0.0, max_steps=1),
                               rows, str(tiny_model_path), tmp_path / str(accum))
             for accum in (1, 4, 8)}
    for accum in (4, 8):
        for name in ("loss", "loss_label", "loss_rationale", "loss_mi", "grad_norm"):
            assert steps[accum][name] == pytest.approx(steps[1][name], rel=1e-4), (accum, name, steps)


@pytest.fixture(scope="module")
def one_process_run(tiny_model_path, tmp_path_factory):
    """The baseline of the two-process tests: one spawned child, 4 examples a step."""
    from distill.training.launch import launch_training

    work = tmp_path_factory.mktemp("one-process")
    return launch_training(tiny_cfg(), make_rows(16), str(tiny_model_path), work / "out", work / "ckpt",
                           quiet())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_processes_train_like_one_on_the_same_global_batch(kind, one_process_run, tiny_model_path,
                                                               tmp_path):
    """2 CPU processes over gloo (torchrun) x 2 examples against 1 process x 4 examples."""
    from distill.training.launch import launch_training

    two = launch_training(tiny_cfg(distributed=kind, nproc=2), make_rows(16), str(tiny_model_path),
                          tmp_path / "out", tmp_path / "ckpt", quiet())
    assert two.data_report["processes"] == 2 and two.data_report["micro_batch"] == 2
    a, b = train_losses(one_process_run.metrics), train_losses(two.metrics)
    assert len(a) == len(b) == 6
    # Each process's loss is its share of the step's token means (losses.StepNorm), so the two
    # agree up to float32 summation order and the processes' own kernels.
    for x, y in zip(a, b):
        assert abs(x - y) < 2e-3 * max(1.0, abs(x)), (a, b)
    assert Path(two.output_dir, "siked-student.json").is_file()
    val = [m["loss"] for m in two.metrics if m["split"] == "val"]
    assert val == pytest.approx([m["loss"] for m in one_process_run.metrics if m["split"] == "val"], abs=2e-3)


@pytest.mark.slow
def test_infonce_gathers_negatives_from_every_process(tiny_model_path, tmp_path):
    """At step 1, 2 processes x 2 examples give the InfoNCE of 1 process x 4 (`step_negatives`)."""
    from distill.training.launch import launch_training

    cfg = {"loss": {"kind": "dss_infonce"}, "val_fraction": 0.0, "max_steps": 1}
    runs = [launch_training(tiny_cfg(**cfg, **extra), make_rows(8, seed=5), str(tiny_model_path),
                            tmp_path / name / "out", tmp_path / name / "ckpt", quiet())
            for name, extra in (("one", {}), ("two", {"distributed": "ddp", "nproc": 2}))]
    one, two = ([m["loss_mi"] for m in run.metrics if m["split"] == "train"] for run in runs)
    assert runs[1].data_report["processes"] == 2
    assert two == pytest.approx(one, rel=1e-4)


@pytest.mark.slow
def test_siked_train_cli_from_a_parquet_set(tiny_model_path, tmp_path, capsys):
    from flows.commands.train_cli import run_train_cli
    from storage.artifacts import read_artifact, write_artifact

    train_set = str(tmp_path / "set.parquet")
    write_artifact(train_set, make_rows(12), "train_examples")
    config = tmp_path / "c.yaml"
    config.write_text("name: clitest\n"
                      "train: {max_steps: 2, batch_size: 2, max_length: 160, checkpoint_every: 1}\n")
    code = run_train_cli(str(config), [f"train_set={train_set}", f"runs_root={tmp_path / 'runs'}",
                                       f"train.model={tiny_model_path}", "train.tensorboard=true",
                                       "train.gradient_checkpointing=true"])
    assert code == 0
    student = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (student / "siked-student.json").is_file() and (student / "config.json").is_file()
    metrics = read_artifact(str(student.parent / "train_metrics.parquet"), "train_metrics").to_pylist()
    assert [m["step"] for m in metrics if m["split"] == "train"] == [1, 2]
    checkpoints = student.parent / "checkpoints"
    assert any((checkpoints / "tensorboard").iterdir())
    report = json.loads((checkpoints / "data_report.json").read_text())
    assert report["train_examples"] + report["val_examples"] == 12


def test_dss_svamp_config_gives_training_rows(data_dir):
    from flows.commands.config_files import read_config
    from tasks.train_set import given_rationale_rows

    cfg = read_config(Path(__file__).resolve().parents[1] / "configs" / "dss_svamp.yaml")
    assert cfg.train_data.name == "dss_svamp" and cfg.train.loss.kind == "dss_mi"
    rows = given_rationale_rows(cfg.train_data, cfg.data_dir)
    assert len(rows) == 789 and rows[0]["question_id"].startswith("dss_svamp/train/")


def test_a_dss_format_training_on_svamp_trains_rationales_without_the_answer(data_dir, tiny_model_path, tmp_path):
    """DSS's format on its SVAMP rows: no rationale target holds the (equation) label, the label task
    learns the equation, and the checkpoint is chosen on label accuracy."""
    from distill.benchmarks import load_benchmark, load_rationales
    from distill.config import BenchmarkRef
    from distill.training.data import dss_rationale_rows

    problems = load_benchmark(BenchmarkRef(name="dss_svamp", split="train"), data_dir).problems[:24]
    rows, _ = dss_rationale_rows(problems, load_rationales("dss_svamp", "train", data_dir))
    cfg = tiny_cfg(format="dss", select_on="label", loss={"kind": "dss_mi"}, max_steps=2, max_length=512,
                   val_fraction=0.2)
    result = train_student(cfg, rows, str(tiny_model_path), tmp_path / "o", tmp_path / "c", quiet())
    report = result.data_report
    assert report["format"] == "dss" and report["rationale_contains_label"] == 0.0
    assert report["rationale_states_answer"] < 1.0
    assert result.best_val["metric"] == "label accuracy"


def test_one_schedule_across_rounds_takes_up_where_the_previous_round_stopped(tiny_model_path, tmp_path):
    """train.schedule_across_rounds=continue: round 1 of 2 neither warms up again nor decays to 0 on its
    own; its learning rates are the second half of one schedule of 2 x max_steps."""
    from distill.training.prepare import lr_multiplier

    cfg = tiny_cfg(max_steps=3, warmup_steps=2, checkpoint_every=3, val_fraction=0.0)
    rows = make_rows(8, words=2)

    def rates(name: str, schedule_round: tuple[int, int] | None) -> list[float]:
        result = train_student(cfg, rows, str(tiny_model_path), tmp_path / name / "out", tmp_path / name / "ckpt",
                               quiet(schedule_round=schedule_round))
        return [m["lr"] for m in result.metrics if m["split"] == "train"]

    own = rates("own", None)
    assert own == pytest.approx([cfg.lr * lr_multiplier(s, "linear", 2, 3) for s in range(3)])
    assert own[0] == 0.0  # a round of its own warms up from 0
    second = rates("second", (1, 2))
    assert second == pytest.approx([cfg.lr * lr_multiplier(s, "linear", 2, 6) for s in range(3, 6)])
    assert second[0] > second[1] > second[2] > 0.0
