"""Fidelity of a model to its teacher, cheap and informative even where accuracy is ~0.

Per task, on the reference solutions (teacher-forced, the same tokens for both models):
KL(teacher || model) per token, the model's and the teacher's perplexity, and top-1 agreement
(how often the model's most likely next token is the teacher's). Free-running: the acceptance
rate when the model drafts for the teacher in greedy speculative decoding, i.e. how much of the
teacher's own greedy output the model predicts (exactly 1.0 for the teacher itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.common.errors import UserError
from harness.models import LoadedModel, require_same_tokenizer
from harness.tasks.base import TASKS
from harness.tasks.batching import continuation_logits
from rad.runtime.decode import SpecStats, speculative_generate


@dataclass
class FidelitySettings:
    chat: bool = False
    limit: int | None = None
    sample_seed: int | None = None
    batch_size: int = 8
    gamma: int = 4
    spec_tokens: int = 64  # new tokens per prompt in the speculative (acceptance) pass


def encode_pair(tokenizer, prompt: str, ref: str, chat: bool) -> tuple[list[int], list[int]]:
    """Context and continuation ids; the continuation is split off the joint encoding (as
    lm-eval does), so the boundary tokenises as it would in running text."""
    add = not chat
    ctx = tokenizer(prompt, add_special_tokens=add)["input_ids"]
    whole = tokenizer(prompt + ref, add_special_tokens=add)["input_ids"]
    return ctx, whole[len(ctx):]


def teacher_forced(model: LoadedModel, teacher: LoadedModel,
                   pairs: list[tuple[list[int], list[int]]], batch_size: int
                   ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Token-weighted KL(teacher||model), perplexities, top-1 agreement; and per-pair values."""
    per = [dict() for _ in pairs]
    tot = {"kl": 0.0, "nll_model": 0.0, "nll_teacher": 0.0, "agree": 0.0, "n": 0}
    gen_m = continuation_logits(model.model, pairs, model.pad_token_id, batch_size)
    gen_t = continuation_logits(teacher.model, pairs, teacher.pad_token_id, batch_size)
    both = zip(gen_m, gen_t, strict=True)
    for (i, lg_m), (j, lg_t) in tqdm(both, total=len(pairs), desc="fidelity"):
        assert i == j  # same lengths -> same order and batches
        n = lg_m.shape[0]
        if n == 0:
            continue
        target = torch.tensor(pairs[i][1][-n:])[:, None]
        lp_m, lp_t = F.log_softmax(lg_m.float(), -1), F.log_softmax(lg_t.float(), -1)
        kl = (lp_t.exp() * (lp_t - lp_m)).sum(-1)  # (n,)
        vals = {"kl": float(kl.sum()), "nll_model": float(-lp_m.gather(-1, target).sum()),
                "nll_teacher": float(-lp_t.gather(-1, target).sum()),
                "agree": float((lp_m.argmax(-1) == lp_t.argmax(-1)).sum()), "n": n}
        for k, v in vals.items():
            tot[k] += v
        per[i] = {"tokens": n, "kl": vals["kl"] / n, "nll_model": vals["nll_model"] / n,
                  "nll_teacher": vals["nll_teacher"] / n, "top1_agreement": vals["agree"] / n}
    n = max(tot["n"], 1)
    return {"kl_teacher_model": tot["kl"] / n, "ppl_model": math.exp(tot["nll_model"] / n),
            "ppl_teacher": math.exp(tot["nll_teacher"] / n), "top1_agreement": tot["agree"] / n,
            "reference_tokens": tot["n"]}, per


def draft_acceptance(model: LoadedModel, teacher: LoadedModel, prompts: list[list[int]],
                     max_new_tokens: int, gamma: int) -> tuple[dict[str, Any], list[dict]]:
    """The model drafts, the teacher verifies (greedy); acceptance over all prompts."""
    total, per = SpecStats(), []
    for ids in tqdm(prompts, desc="draft acceptance"):
        res = speculative_generate(teacher.model, torch.tensor([ids]), max_new_tokens, gamma,
                                   teacher.eos_token_ids, draft=model.model)
        total = total.merge(res.stats)
        per.append({"drafted": res.stats.drafted, "accepted": res.stats.accepted})
    return {"acceptance_rate": total.acceptance_rate,
            "mean_accepted_length": total.mean_accepted_length, "drafted": total.drafted,
            "accepted": total.accepted, "gamma": gamma, "max_new_tokens": max_new_tokens}, per


def evaluate_fidelity(model: LoadedModel, teacher: LoadedModel, task_name: str,
                      s: FidelitySettings) -> dict[str, Any]:
    require_same_tokenizer(model, teacher, "fidelity metrics compare token distributions and "
                           "need the same one")
    if s.gamma < 1 or s.spec_tokens < 1:
        raise UserError("--gamma and --spec-tokens must be >= 1")
    task = TASKS.get(task_name)
    docs = task.docs(s.limit, s.sample_seed)
    texts = task.reference_pairs(teacher.tokenizer, docs, s.chat)
    pairs = [encode_pair(teacher.tokenizer, p, r, s.chat) for p, r in texts]
    forced, per_forced = teacher_forced(model, teacher, pairs, s.batch_size)
    spec, per_spec = draft_acceptance(model, teacher, [c for c, _ in pairs], s.spec_tokens,
                                      s.gamma)
    records = [{"prompt": p, "reference": r, **f, **a}
               for (p, r), f, a in zip(texts, per_forced, per_spec, strict=True)]
    return {"metrics": {**forced, **spec}, "n": len(docs), "teacher": teacher.name,
            "settings": {"chat": s.chat, "limit": s.limit, "sample_seed": s.sample_seed,
                         "batch_size": s.batch_size, "gamma": s.gamma,
                         "spec_tokens": s.spec_tokens,
                         "reference": task.reference},
            "records": records}
