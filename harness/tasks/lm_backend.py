"""The rad runtime as an lm-eval model (`rad`): lm-eval's requests in, answers from the
batched generation and scoring of `harness.tasks.batching` out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from harness.models import LoadedModel, load_model
from harness.tasks.batching import batched_generate, model_max_length, score_continuations


@register_model("rad")
class RadLM(TemplateLM):
    """lm-eval backend on the rad runtime. `pretrained` is anything `rad --model` takes; or pass
    an already loaded `LoadedModel` as `loaded` (the CLI does, to load once)."""

    def __init__(
        self,
        pretrained: str | None = None,
        loaded: LoadedModel | None = None,
        dtype: str = "fp32",
        device: str = "cpu",
        batch_size: int | str = 8,
        max_gen_toks: int | str = 256,
        max_length: int | str | None = None,
        add_bos_token: bool | str = False,
        max_batch_size: Any = None,  # lm-eval passes it; batches here are fixed-size
    ) -> None:
        super().__init__()
        if loaded is None:
            if pretrained is None:
                raise ValueError("RadLM needs pretrained=<name or folder> or loaded=")
            loaded = load_model(str(pretrained), dtype=dtype, device=device or "cpu")
        self.lm = loaded
        self.tokenizer = loaded.tokenizer
        self._device = loaded.model.device
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._max_length = int(max_length) if max_length else model_max_length(loaded)
        self.add_bos_token = str(add_bos_token).lower() in ("1", "true")
        if self.batch_size < 1 or self.max_gen_toks < 1:
            raise ValueError("batch_size and max_gen_toks must be >= 1")

    # -- tokenisation ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.lm.eos_token_ids[0] if self.tokenizer.eos_token_id is None \
            else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer(string, add_special_tokens=add)["input_ids"]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # -- chat -------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.lm.folder).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.lm.name} has no chat template; evaluate without --chat")
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)

    # -- requests ---------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        bar = tqdm(total=len(pairs), desc="loglikelihood", disable=disable_tqdm)
        out = score_continuations(self.lm.model, pairs, self.lm.pad_token_id,
                                  override_bs or self.batch_size, self.max_length, bar)
        bar.close()
        for (key, _, _), answer in zip(requests, out, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            rolling = lm_eval_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(lm_eval_utils.make_disjoint_window, rolling):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, scores, strict=True):
            totals[i] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        settings = [_generation_settings(req.args[1], self.max_gen_toks) for req in requests]
        for i, s in enumerate(settings):
            groups.setdefault(repr(s), []).append(i)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for idx in groups.values():
            until, max_new = settings[idx[0]]
            budget = max(self.max_length - max_new, 1)
            contexts = [self.tok_encode(requests[i].args[0])[-budget:] for i in idx]
            texts = batched_generate(self.lm, contexts, until, max_new, self.batch_size,
                                     progress=bar)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        bar.close()
        return out


def _generation_settings(gen_kwargs: dict, default_max: int) -> tuple[list[str], int]:
    """(stop strings, max new tokens) from an lm-eval request; only greedy decoding exists."""
    kw = dict(gen_kwargs or {})
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    max_new = int(kw.pop("max_gen_toks", default_max))
    if kw.pop("do_sample", False) and float(kw.get("temperature", 0.0) or 0.0) > 0:
        raise ValueError("the rad backend decodes greedily; this task asks for sampling "
                         "(do_sample=True, temperature>0)")
    return until, max_new
