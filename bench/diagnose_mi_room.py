"""How much of the parameter-free MI term can training remove? A diagnostic, not a timing.

    python bench/diagnose_mi_room.py --run RUN_DIR [--run RUN_DIR ...] [--examples 32]

For each run folder (a `siked run` or an experiment arm with a `dss`-format training step), it reads
the training rows and problems of its iteration-0 training step, takes the first `--examples`
training texts in a fixed shuffled order, and runs the run's trained student on them in batches of
8: L_MI, its reachable floor (the lowest value over every pooled rationale vector q in [0, 1]^V,
`distill.training.losses.box_floor`), the room between them, the label task's pooled mass
S = sum(p) and S * log V (L_MI is S * log V - p . q up to a term below 0.1% of it, so the room is at
most S), and the label cross-entropy. `--base` adds the model the run started from.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def training_inputs(run_dir: Path) -> tuple[str, str, str, str]:
    """(train rows URL, problems URL, student folder, base model) of the run's iteration-0 training."""
    steps = {s["name"]: s for s in json.loads((run_dir / "steps.json").read_text(encoding="utf-8"))["steps"]}
    train = steps["iter-00/train"]
    rows = steps[train["inputs"]["train_set"]]["outputs"]["distill_set"]
    problems = steps[train["inputs"]["problems"]]["outputs"]["problems"]
    config = (run_dir / "config.yaml").read_text(encoding="utf-8")
    from distill.strict_yaml import load_yaml

    return rows, problems, train["outputs"]["student"], load_yaml(config)["train"]["model"]


def texts_of(rows_url: str, problems_url: str, count: int) -> list:
    from distill.training.data import build_texts
    from storage.artifacts import read_artifact

    answer_text = {p["id"]: p["answer_text"] for p in read_artifact(problems_url, "problems").to_pylist()}
    rows = [{**r, "label_text": answer_text[r["question_id"]]}
            for r in read_artifact(rows_url, "train_examples").to_pylist()]
    texts, _ = build_texts(rows, "dss")
    random.Random(0).shuffle(texts)
    return texts[:count]


def measure(model_path: str, texts: list) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.config import LossConfig
    from distill.training.data import collate_padded, tokenize_texts
    from distill.training.losses import compute_loss, pooled_max_from_log_probs, to_log_probs

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    examples, _ = tokenize_texts(texts, tokenizer, 512)
    sums = {"mi": 0.0, "floor": 0.0, "mass": 0.0, "label_ce": 0.0}
    batches = range(0, len(examples), 8)
    for start in batches:
        batch = collate_padded(examples[start:start + 8], pad_id)
        with torch.no_grad():
            loss = compute_loss(model, batch, LossConfig(kind="dss_mi", alpha=0.5, beta=0.1))
            # the terms as training computes them, then the label side's pooled mass, which they do not carry
            logits = model(input_ids=batch["label_input_ids"], attention_mask=batch["label_attention_mask"]).logits
            p = pooled_max_from_log_probs(to_log_probs(logits), batch["label_labels"])
        sums["mi"] += float(loss.terms["mi"])
        sums["floor"] += float(loss.mi_floor)
        sums["mass"] += float(p.sum(-1).mean())
        sums["label_ce"] += float(loss.terms["label"])
    means = {k: v / len(batches) for k, v in sums.items()}
    means["room"] = means["mi"] - means["floor"]
    means["mass_log_v"] = means["mass"] * math.log(model.config.vocab_size)
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, type=Path, help="a run folder (repeatable)")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--base", action="store_true", help="also measure the model the first run started from")
    args = parser.parse_args()

    from distill.models import resolve_model
    from storage.paths import models_dir

    measured = []
    for index, run_dir in enumerate(args.run):
        rows, problems, student, base = training_inputs(run_dir)
        texts = texts_of(rows, problems, args.examples)
        if index == 0 and args.base:
            base_path = resolve_model(base, models_dir())
            measured.append(("base", measure(base_path, texts)))
        measured.append((run_dir.name, measure(student, texts)))
    print(f"{args.examples} training examples in batches of 8; L_MI, floor and room in nats, per example")
    print("| model | L_MI | reachable floor | room | label mass S | S log V | label CE |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m in measured:
        print(f"| {name} | {m['mi']:.2f} | {m['floor']:.2f} | {m['room']:.2f} | {m['mass']:.2f} | "
              f"{m['mass_log_v']:.2f} | {m['label_ce']:.3f} |")


if __name__ == "__main__":
    main()
