"""Batched `transformers` generate: the baseline of the engine benchmark and the engine of tests
with tiny models.

Prompts are sorted by length and sent `engine.concurrency` at a time (left padding), each with
`num_return_sequences = n`; stop strings are matched in the generated text only, as vLLM does. Its answers follow vLLM's conventions so the two compare: text without
the stop string, special tokens skipped, `completion_tokens` counting the end-of-sequence token,
`finish_reason` "stop" (end of sequence or stop string) or "length". Sampling is seeded once per
engine (`torch.manual_seed(engine.seed)`, again by `reseed(seed)`); top-k is off, as in vLLM. Temperature 0 decodes greedily
once and repeats the answer n times. `score` gives the log-probabilities of given token ids
(distill.engines.prompt_logprobs) from one forward pass per sequence.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from distill.config import EngineConfig, SamplingConfig
from distill.engines.base import Completion, GenerationRequest, adapter_stamp, cut_at_stop
from distill.engines.prompt_logprobs import ScoreRequest, TokenScores, check_score_requests


class TransformersEngine:
    name = "transformers"

    def __init__(self, cfg: EngineConfig, model_path: str):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.version = transformers.__version__
        self.model = model_path
        self.batch_size = cfg.concurrency
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        dtype = cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self._base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self._device).eval()
        self._net = self._base
        self._adapter: tuple | None = None
        self._stop_ids = {self._tokenizer.pad_token_id, *_as_list(self._base.generation_config.eos_token_id)}
        self._stop_ids.discard(None)
        torch.manual_seed(cfg.seed)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 lora_path: str | None = None) -> list[list[Completion]]:
        from tqdm import tqdm

        self._use_adapter(lora_path)
        if not requests:
            return []
        lengths = [len(ids) for ids in self._tokenizer([r.prompt for r in requests])["input_ids"]]
        order = sorted(range(len(requests)), key=lambda i: -lengths[i])  # little padding per batch
        results: list[list[Completion]] = [[] for _ in requests]
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="transformers: batches", file=sys.stderr, disable=len(batches) < 2):
            for i, completions in zip(batch, self._generate_batch([requests[i].prompt for i in batch], sampling)):
                results[i] = completions
        return results

    def _generate_batch(self, prompts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        import torch

        encoded = self._tokenizer(prompts, return_tensors="pt", padding=True).to(self._device)
        greedy = sampling.temperature == 0
        per_prompt = 1 if greedy else sampling.n
        options: dict[str, Any] = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if sampling.stop:
            start = encoded["input_ids"].shape[1]
            options["stopping_criteria"] = [_StopStrings(self._tokenizer, list(sampling.stop), start)]
        with torch.inference_mode():
            sequences = self._net.generate(
                **encoded, max_new_tokens=sampling.max_tokens, num_return_sequences=per_prompt,
                pad_token_id=self._tokenizer.pad_token_id, **options)
        new_tokens = sequences[:, encoded["input_ids"].shape[1]:].tolist()
        prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        out = []
        for p, prompt_length in enumerate(prompt_tokens):
            answers = [self._completion(new_tokens[p * per_prompt + k], prompt_length, sampling)
                       for k in range(per_prompt)]
            out.append(answers * sampling.n if greedy else answers)
        return out

    def _completion(self, tokens: list[int], prompt_tokens: int, sampling: SamplingConfig) -> Completion:
        # A finished row is padded (pad may equal eos): the first stop id ends the answer.
        end = next((i for i, t in enumerate(tokens) if t in self._stop_ids), len(tokens))
        text, hit_stop = cut_at_stop(self._tokenizer.decode(tokens[:end], skip_special_tokens=True),
                                     list(sampling.stop))
        if hit_stop:
            return Completion(text, prompt_tokens, end, "stop")
        if end < len(tokens):
            return Completion(text, prompt_tokens, end + 1, "stop")  # + the end-of-sequence token
        return Completion(text, prompt_tokens, len(tokens), "length")

    def _use_adapter(self, lora_path: str | None) -> None:
        """Wrap the base model in the PEFT adapter at `lora_path` (None: the base model alone)."""
        wanted = None if lora_path is None else (str(Path(lora_path).resolve()), adapter_stamp(Path(lora_path)))
        if wanted == self._adapter:
            return
        if self._adapter is not None:
            self._net = self._net.unload()  # removes the LoRA layers without merging them
        self._net, self._adapter = self._base, None
        if wanted is not None:
            from peft import PeftModel

            self._net = PeftModel.from_pretrained(self._base, wanted[0]).eval()
            self._adapter = wanted

    def score(self, requests: list[ScoreRequest], k: int, lora_path: str | None = None) -> list[TokenScores]:
        """The model's log-probabilities at each completion token of each request, in request order
        (distill.engines.prompt_logprobs): one forward pass per sequence, the log-softmax of its
        logits in float32 (position t predicts token t + 1), the top-k by `torch.topk` (likeliest
        first). Exact, unbatched: the reference the vLLM scores are checked against."""
        import torch

        check_score_requests(requests, k)
        self._use_adapter(lora_path)
        out = []
        for request in requests:
            ids = torch.tensor([request.token_ids], device=self._device)
            with torch.inference_mode():
                logits = self._net(input_ids=ids).logits[0].float()
            # Rows prompt_len - 1 .. T - 2 predict the completion tokens prompt_len .. T - 1: [C, V].
            logprobs = torch.log_softmax(logits[request.prompt_len - 1:-1], dim=-1)
            completion = ids[0, request.prompt_len:]
            sampled = logprobs.gather(1, completion[:, None])[:, 0]
            top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)  # sorted, likeliest first
            out.append(TokenScores(sampled.tolist(), top.indices.tolist(), top.values.tolist()))
        return out

    def reseed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def tokenizer(self) -> Any | None:
        return self._tokenizer

    def close(self) -> None:
        self._net = self._base = None


class _StopStrings:
    """Ends a row once its generated text holds a stop string. (transformers' own `stop_strings`
    also matches across the prompt's end, which vLLM never does: a prompt ending in "\n" would
    stop on a generated "\n\n" when the stop string is "\n\n\n".)"""

    def __init__(self, tokenizer: Any, stop: list[str], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, stop, start

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
