"""Distillation losses against a teacher stored as top-k log-probabilities per token.

Storing full teacher distributions costs vocab (49k for SmolLM2) floats per token; storing the
top k log-probs and their token ids costs 2k numbers and lets every method and seed of a
comparison reuse one teacher pass. The losses compare distributions over k + 1 outcomes: the
teacher's top-k tokens and one "rest of the vocabulary" bucket. That is an exact KL between two
coarsened distributions: >= 0, exactly 0 when student == teacher, a lower bound on the full
KL (data-processing inequality), and equal to the full KL when k = vocab (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rad.registry import Registry


@dataclass
class TeacherTargets:
    logp: torch.Tensor  # (N, T, k) teacher log-probs at temperature tau, descending
    index: torch.Tensor  # (N, T, k) token ids (int32 on disk, long when used)
    rest: torch.Tensor  # (N, T, 1) log of the teacher's mass outside the top k
    tau: float

    def __getitem__(self, rows) -> TeacherTargets:
        return TeacherTargets(self.logp[rows], self.index[rows], self.rest[rows], self.tau)

    def to(self, device: torch.device) -> TeacherTargets:
        """Targets are cached on the CPU; a batch moves to the student's device."""
        return TeacherTargets(self.logp.to(device), self.index.to(device), self.rest.to(device),
                              self.tau)


def _rest_logp(logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log of the mass outside `index`, from the full log-probs (exact: no 1 - sum in fp32,
    which rounds a 1e-10 remainder to zero)."""
    outside = logp.scatter(-1, index, -torch.inf)
    return torch.logsumexp(outside, dim=-1, keepdim=True).clamp(min=-1e4)


def teacher_targets(logits: torch.Tensor, k: int, tau: float = 1.0) -> TeacherTargets:
    """Top-k log-probs of (B, T, V) logits at temperature tau, plus the rest's log-mass."""
    x = logits.float()
    if tau != 1.0:  # (a pass over B x T x 49k floats saved where it would divide by one)
        x = x / tau
    logp = F.log_softmax(x, dim=-1)
    top, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return TeacherTargets(top, idx.to(torch.int32), _rest_logp(logp, idx), tau)


def _buckets(logp_topk: torch.Tensor, rest: torch.Tensor, vocab: int) -> torch.Tensor:
    """(…, k) top-k log-probs and (…, 1) rest -> (…, k + 1); no rest bucket when k covers the
    vocabulary."""
    return logp_topk if logp_topk.shape[-1] >= vocab else torch.cat([logp_topk, rest], dim=-1)


def bucket_kl(student_logits: torch.Tensor, targets: TeacherTargets, mask: torch.Tensor,
              reverse: bool = False) -> torch.Tensor:
    """Mean over masked tokens of KL(teacher || student) (or KL(student || teacher) with
    `reverse`) over the teacher's top-k tokens plus the rest bucket. mask: (B, T) bool/0-1."""
    s_logp = F.log_softmax(student_logits.float() / targets.tau, dim=-1)
    vocab = student_logits.shape[-1]
    index = targets.index.long()
    s_b = _buckets(s_logp.gather(-1, index), _rest_logp(s_logp, index), vocab)
    t_b = _buckets(targets.logp.float(), targets.rest.float(), vocab)
    p, log_p, log_q = (s_b.exp(), s_b, t_b) if reverse else (t_b.exp(), t_b, s_b)
    per_token = (p * (log_p - log_q)).sum(-1)  # (B, T)
    m = mask.to(per_token.dtype)
    # tau^2 keeps gradient magnitudes comparable across temperatures (Hinton et al.)
    return (per_token * m).sum() / m.sum().clamp(min=1) * targets.tau ** 2


def full_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            tau: float = 1.0, reverse: bool = False) -> torch.Tensor:
    """The reference: KL over the whole vocabulary (what bucket_kl equals at k = vocab)."""
    s = F.log_softmax(student_logits.float() / tau, dim=-1)
    t = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    log_p, log_q = (s, t) if reverse else (t, s)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1) * tau ** 2


def next_token_ce(student_logits: torch.Tensor, input_ids: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the data itself (position t predicts token t + 1)."""
    logits = student_logits[:, :-1].float()
    labels = input_ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


# name -> (student logits, targets, mask) -> loss: what a recipe's `loss` names.
LOSSES: Registry = Registry("loss")
LOSSES.register("forward-kl", lambda logits, targets, mask: bucket_kl(logits, targets, mask))
LOSSES.register("reverse-kl", lambda logits, targets, mask: bucket_kl(logits, targets, mask,
                                                                      reverse=True))


def distill_loss(student_logits, targets: TeacherTargets, input_ids, mask, loss: str,
                 ce_weight: float = 0.0) -> torch.Tensor:
    value = LOSSES.get(loss)(student_logits, targets, mask)
    if ce_weight:
        value = value + ce_weight * next_token_ce(student_logits, input_ids, mask)
    return value
