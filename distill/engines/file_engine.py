"""Pre-generated rationales served as completions: Distilling Step-by-Step's PaLM-540B outputs, or
rationales of any origin in JSON Lines.

JSON Lines files (`*.jsonl`) hold one rationale per line: `{"question_id": ..., "strategy": ...,
"text": ...}` (`strategy` optional: without it the rationale serves every strategy). A request
`<question_id>|<strategy>` is answered from that strategy's rationales when there are any, else
from the question's strategy-less ones, in file order, `sampling.n` at most.

    engine:
      kind: file
      files: [distilling_step_by_step/svamp/llm/train_CoT_0.json, distilling_step_by_step/svamp/llm/train_CoT_1.json]

The released `<task>/llm/<split>_CoT_<k>.json` files are consecutive slices of one split (element j
of file k is problem k*B + j; B = 500 for svamp, 1000 for cqa), so each problem has exactly ONE
rationale: whatever `sampling.n` asks, this engine answers at most one completion per request, and
none for a problem the listed files do not cover. Reading and aligning the files is
`distill.benchmarks.dss.load_rationales`; this module only picks the listed files and cuts the text.

The completion text is the released string cut at its first "\\n\\nQ:": PaLM's few-shot output runs
on into a made-up next question, and everything before the cut ("... The answer is (84 / 2).") is
its answer to this one. (The official `data_utils.py` cuts at the first "Q:"; in the svamp and cqa
files every "Q:" follows a blank line, so both cuts agree.)

Token counts use the given tokenizer (the student's, so they compare with generated samples), or a
whitespace split without one. `finish_reason` is always "stop".
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from distill.config import SamplingConfig
from distill.engines.base import Completion, EngineError, GenerationRequest

DSS_MODEL = "palm-540b"  # the teacher that wrote the released rationales
_CUT = "\n\nQ:"
_FILE_NAME = re.compile(r"^(?P<split>\w+)_CoT_\d+\.json$")


def completion_text(raw: str) -> str:
    """A released PaLM output up to its made-up next question."""
    return raw.split(_CUT, 1)[0].rstrip()


def load_dss_rationales(files: list[Path], data_dir: Path) -> dict[str, list[str]]:
    """{problem id: [completion text]} for the problems the listed rationale files cover.

    `files` lie under `data_dir/distilling_step_by_step/<task>/llm/`; ids are those of
    `distill.benchmarks` (`dss_svamp/train/17`, `dss_cqa/test/<id>`).
    """
    from distill.benchmarks import dss

    data_dir = Path(data_dir).resolve()
    wanted: dict[tuple[str, str], set[str]] = {}
    for path in files:
        path = Path(path).resolve()
        benchmark = next((name for name, task in dss.TASKS.items()
                          if path.parent == data_dir / dss.ROOT / task.folder / "llm"), None)
        match = _FILE_NAME.match(path.name)
        if benchmark is None or match is None:
            raise EngineError(f"{path}: not a Distilling Step-by-Step rationale file "
                              f"({dss.ROOT}/<svamp|cqa>/llm/<split>_CoT_<k>.json under {data_dir})")
        wanted.setdefault((benchmark, match["split"]), set()).add(path.relative_to(data_dir).as_posix())
    rationales: dict[str, list[str]] = {}
    for (benchmark, split), names in wanted.items():
        for problem_id, found in dss.load_rationales(benchmark, split, data_dir).items():
            if found.source.rsplit("[", 1)[0] in names:
                rationales.setdefault(problem_id, []).append(completion_text(found.raw))
    return rationales


def load_jsonl_rationales(files: list[Path]) -> dict[str, list[str]]:
    """{`<question_id>|<strategy>` or `<question_id>`: [text, ...]} from JSON Lines files."""
    rationales: dict[str, list[str]] = {}
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key, text = str(record["question_id"]), str(record["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise EngineError(f"{path}, line {number}: not a rationale record "
                                      f"({{\"question_id\", \"text\"[, \"strategy\"]}}): {exc}") from None
                if record.get("strategy"):
                    key = f"{key}|{record['strategy']}"
                rationales.setdefault(key, []).append(text)
    return rationales


def files_digest(files: list[Path]) -> str:
    """A short content hash of the files, recorded as the engine version."""
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in files):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class FileEngine:
    name = "file"

    def __init__(self, rationales: dict[str, list[str]], model: str, version: str,
                 tokenizer: Any | None = None):
        self.model = model
        self.version = version
        self._rationales = rationales
        self._tokenizer = tokenizer

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 lora_path: str | None = None) -> list[list[Completion]]:
        if lora_path is not None:
            raise EngineError("the file engine serves fixed rationales; a LoRA adapter means nothing to it")
        results = []
        for request in requests:
            texts = (self._rationales.get(request.key) or self._rationales.get(request.question_id, []))[: sampling.n]
            prompt_tokens = self._count(request.prompt)
            results.append([Completion(text=t, prompt_tokens=prompt_tokens,
                                       completion_tokens=self._count(t), finish_reason="stop")
                            for t in texts])
        unanswered = sum(1 for r in results if not r)
        if unanswered:
            print(f"file engine: {unanswered} of {len(requests)} requests have no rationale in the files",
                  file=sys.stderr, flush=True)
        return results

    def _count(self, text: str) -> int:
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenizer(self) -> Any | None:
        return self._tokenizer

    def close(self) -> None:
        pass
