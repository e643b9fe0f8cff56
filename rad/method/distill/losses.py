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


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 at least: the references compute in fp32, or in fp64 given fp64 (the tests'
    ground truth)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rest_logp(logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log of the mass outside `index`, from the full log-probs (exact: no 1 - sum in fp32,
    which rounds a 1e-10 remainder to zero)."""
    outside = logp.scatter(-1, index, -torch.inf)
    return torch.logsumexp(outside, dim=-1, keepdim=True).clamp(min=-1e4)


def teacher_targets(logits: torch.Tensor, k: int, tau: float = 1.0) -> TeacherTargets:
    """Top-k log-probs of (B, T, V) logits at temperature tau, plus the rest's log-mass."""
    x = _wide(logits)
    if tau != 1.0:  # (a pass over B x T x 49k floats saved where it would divide by one)
        x = x / tau
    logp = F.log_softmax(x, dim=-1)
    top, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return TeacherTargets(top, idx.to(torch.int32), _rest_logp(logp, idx), tau)


# -- the fused vocabulary pass (fast path; `teacher_targets` / `bucket_kl` are its reference) --

VOCAB_ROWS = 64  # rows per chunk: a chunk's fp32 logits (64 x 49k x 4 B = 12.6 MB) stay in cache


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + VOCAB_ROWS, n)) for i in range(0, n, VOCAB_ROWS)]


def _lse_and_rest(u: torch.Tensor, index: torch.Tensor):
    """(m, L - m, R - m) of rows u (rows, V) fp32: m the rows' max, L their logsumexp, R the
    logsumexp outside `index`. Both sums come from one exp pass: the rest sums exp(u - m)
    with the top entries zeroed, not 1 - sum (exact, as `_rest_logp`: no rounding of a 1e-10
    remainder to zero); L - m is log1p of the sum without the max's own 1 (a student sure of
    one token has L - m ~ 1e-6, which log(1 + ...) would round). Rows whose rest is below
    e^-80 of the max (where fp32's exp underflows) take a logsumexp of their own. Kept
    relative to m, so L - R has fp32's precision near 0, not near the logits' size. u is
    overwritten with u - m."""
    m, at_max = u.max(-1, keepdim=True)
    d = u.sub_(m)
    e = torch.exp(d).scatter_(-1, at_max, 0.0)  # exp(0) = 1 at the max, kept apart
    lse = e.sum(-1, keepdim=True).log1p_()
    max_outside = (index != at_max).all(-1, keepdim=True)
    rest = (e.scatter_(-1, index, 0.0).sum(-1, keepdim=True) + max_outside).log_()
    # below e^-80 the sum is made of fp32 subnormals (or zeros): inexact
    tiny = (rest < -80).squeeze(-1) & (index.shape[-1] < u.shape[-1])
    if tiny.any():
        rest[tiny] = torch.logsumexp(d[tiny].scatter(-1, index[tiny], -torch.inf), -1,
                                     keepdim=True)
    return m, lse, rest


def _rest_logp_from(top_logp: torch.Tensor, rest: torch.Tensor, lse: torch.Tensor):
    """log of the mass outside the top k, from the top-k log-probs (rows, k) and `_lse_and_rest`'s
    R - m and L - m: log1p(-top mass) where the top holds under half the mass (R - L would
    cancel to 0 there), R - L where it holds more (1 - top mass would round); clamped as
    `_rest_logp` clamps it."""
    top_mass = top_logp.exp().sum(-1, keepdim=True)
    return torch.where(top_mass < 0.5, torch.log1p(-top_mass.clamp(max=0.5)),
                       rest - lse).clamp(min=-1e4)


@torch.no_grad()
def teacher_targets_fused(logits: torch.Tensor, k: int, tau: float = 1.0) -> TeacherTargets:
    """`teacher_targets` chunk by chunk, without the full (B, T, V) fp32 log-softmax and its
    scattered copy (top-k of the logits is top-k of the log-probs): 0.31 s of vocabulary work
    per 1024 tokens became ~0.14 s here. Compared with the reference by
    tests/test_distill.py::test_fused_vocabulary_passes_match_the_reference."""
    flat = logits.flatten(0, -2)  # (rows, V)
    k = min(k, flat.shape[-1])
    if k >= flat.shape[-1]:  # no rest bucket: the reference
        return teacher_targets(logits, k, tau)
    tops, idxs, rests = [], [], []
    for rows in _chunks(flat.shape[0]):
        u = flat[rows].to(torch.float32, copy=True)  # (overwritten below)
        if tau != 1.0:
            u /= tau
        top, idx = u.topk(k, dim=-1)
        m, lse, rest = _lse_and_rest(u, idx)
        top_logp = top - m - lse
        tops.append(top_logp)
        idxs.append(idx.to(torch.int32))
        rests.append(_rest_logp_from(top_logp, rest, lse))
    shape = logits.shape[:-1]
    return TeacherTargets(torch.cat(tops).unflatten(0, shape), torch.cat(idxs).unflatten(0, shape),
                          torch.cat(rests).unflatten(0, shape), tau)


class _FusedBucketKL(torch.autograd.Function):
    """Per-token bucket KL and its gradient, chunk by chunk over rows of student logits (any
    float dtype; computed in fp32). Saves only the logits and (rows, 1) log-normalisers, where
    autograd through `bucket_kl` keeps several (B, T, V) fp32 tensors and runs a logsumexp
    backward over the scattered copy (1.07 s of a 3.4 s bf16 distillation step on the
    embedded teacher, 4 x 256 tokens; 0.17 s here)."""

    @staticmethod
    def forward(ctx, z, t_logp, t_rest, index, tau: float, reverse: bool):
        n = z.shape[0]
        s_top = torch.empty(t_logp.shape, dtype=torch.float32, device=z.device)
        shift = torch.empty(n, 1, dtype=torch.float32, device=z.device)  # m + (L - m) = L
        s_rest = torch.empty_like(shift)
        for rows in _chunks(n):
            u = z[rows].to(torch.float32, copy=True)  # (overwritten below)
            if tau != 1.0:
                u /= tau
            top = u.gather(-1, index[rows])
            m, lse, rest = _lse_and_rest(u, index[rows])
            s_top[rows] = top.sub_(m).sub_(lse)
            s_rest[rows] = _rest_logp_from(s_top[rows], rest, lse)
            shift[rows] = m + lse
        s_b = torch.cat([s_top, s_rest], dim=-1)  # (rows, k + 1)
        t_b = torch.cat([t_logp, t_rest], dim=-1).float()
        p, log_p, log_q = (s_b.exp(), s_b, t_b) if reverse else (t_b.exp(), t_b, s_b)
        per_token = (p * (log_p - log_q)).sum(-1)
        ctx.save_for_backward(z, index, shift, s_b, t_b)
        ctx.tau, ctx.reverse = tau, reverse
        return per_token

    @staticmethod
    def backward(ctx, grad):
        z, index, shift, s_b, t_b = ctx.saved_tensors
        tau = ctx.tau
        # d per_token / d s_b: forward -p_t; reverse q (s - log p_t + 1), q = exp(s)
        g = (s_b.exp() * (s_b - t_b + 1) if ctx.reverse else -t_b.exp()) * grad[:, None]
        g_top, g_rest = g[:, :-1], g[:, -1:]
        s_rest = s_b[:, -1:]
        live = s_rest > -1e4  # a clamped rest has no gradient (as through the reference's clamp)
        far = live & (s_rest < -80)  # e^(-s_rest) would overflow fp32: two exps for those rows
        g_top_sum = g_top.sum(-1, keepdim=True)
        # s_top_j = u[idx_j] - L, s_rest = R - L (u = z / tau) give, for i outside the top k,
        #   du_i = g_rest e^(u_i - R) - (sum_j g_j + g_rest) e^(u_i - L)
        #        = e^(u_i - L) (g_rest top_mass e^(-s_rest) - sum_j g_j)
        # (one exp pass; e^(-s_rest) - 1 = top_mass / rest_mass: no cancellation where the
        # student's rest holds nearly all its mass), and at idx_j:
        #   du = g_j - (sum_l g_l + g_rest) e^(s_j) = -g_j expm1(s_j) - (others_j) e^(s_j)
        # with others_j the sum over every bucket but j (no cancellation where q_j is near 1).
        top_mass = s_b[:, :-1].exp().sum(-1, keepdim=True)
        outside_coef = torch.where(live & ~far, g_rest * top_mass * torch.exp(-s_rest.masked_fill(
            far | ~live, 0)), torch.where(far, -g_rest, 0)) - g_top_sum
        s_top = s_b[:, :-1]
        k = s_top.shape[-1]
        others = (g_top @ (1 - torch.eye(k, dtype=g_top.dtype, device=g_top.device))
                  + torch.where(live, g_rest, 0))
        top_grad = -g_top * torch.expm1(s_top) - others * s_top.exp()
        dz = torch.empty_like(z)
        for rows in _chunks(z.shape[0]):
            u = z[rows].to(torch.float32, copy=True)  # (overwritten below)
            if tau != 1.0:
                u /= tau
            idx = index[rows]
            far_rows = far[rows].squeeze(-1)
            far_part = None
            if far_rows.any():  # g_rest e^(u_i - R), before u is overwritten
                outside = u[far_rows].scatter(-1, idx[far_rows], -torch.inf)
                far_part = g_rest[rows][far_rows] * torch.exp(
                    outside - shift[rows][far_rows] - s_rest[rows][far_rows])
            du = u.sub_(shift[rows]).exp_().mul_(outside_coef[rows])
            if far_part is not None:
                du[far_rows] += far_part
            du.scatter_(-1, idx, top_grad[rows])
            dz[rows] = du / tau if tau != 1.0 else du
        return dz, None, None, None, None, None


def bucket_kl_fused(student_logits: torch.Tensor, targets: TeacherTargets, mask: torch.Tensor,
                    reverse: bool = False) -> torch.Tensor:
    """`bucket_kl` (the reference) through `_FusedBucketKL`: the same value and gradient."""
    if targets.index.shape[-1] >= student_logits.shape[-1]:  # no rest bucket: the reference
        return bucket_kl(student_logits, targets, mask, reverse)
    shape = student_logits.shape[:-1]
    per_token = _FusedBucketKL.apply(
        student_logits.flatten(0, -2), targets.logp.flatten(0, -2), targets.rest.flatten(0, -2),
        targets.index.long().flatten(0, -2), targets.tau, reverse).view(shape)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1) * targets.tau ** 2


def _buckets(logp_topk: torch.Tensor, rest: torch.Tensor, vocab: int) -> torch.Tensor:
    """(…, k) top-k log-probs and (…, 1) rest -> (…, k + 1); no rest bucket when k covers the
    vocabulary."""
    return logp_topk if logp_topk.shape[-1] >= vocab else torch.cat([logp_topk, rest], dim=-1)


def bucket_kl(student_logits: torch.Tensor, targets: TeacherTargets, mask: torch.Tensor,
              reverse: bool = False) -> torch.Tensor:
    """Mean over masked tokens of KL(teacher || student) (or KL(student || teacher) with
    `reverse`) over the teacher's top-k tokens plus the rest bucket. mask: (B, T) bool/0-1."""
    s_logp = F.log_softmax(_wide(student_logits) / targets.tau, dim=-1)
    vocab = student_logits.shape[-1]
    index = targets.index.long()
    s_b = _buckets(s_logp.gather(-1, index), _rest_logp(s_logp, index), vocab)
    t_b = _buckets(_wide(targets.logp), _wide(targets.rest), vocab)
    p, log_p, log_q = (s_b.exp(), s_b, t_b) if reverse else (t_b.exp(), t_b, s_b)
    per_token = (p * (log_p - log_q)).sum(-1)  # (B, T)
    m = mask.to(per_token.dtype)
    # tau^2 keeps gradient magnitudes comparable across temperatures (Hinton et al.)
    return (per_token * m).sum() / m.sum().clamp(min=1) * targets.tau ** 2


def full_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            tau: float = 1.0, reverse: bool = False) -> torch.Tensor:
    """The reference: KL over the whole vocabulary (what bucket_kl equals at k = vocab)."""
    s = F.log_softmax(_wide(student_logits) / tau, dim=-1)
    t = F.log_softmax(_wide(teacher_logits) / tau, dim=-1)
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


# name -> (student logits, targets, mask, fused) -> loss: what a recipe's `loss` names.
LOSSES: Registry = Registry("loss")
LOSSES.register("forward-kl", lambda logits, targets, mask, fused: (
    bucket_kl_fused if fused else bucket_kl)(logits, targets, mask))
LOSSES.register("reverse-kl", lambda logits, targets, mask, fused: (
    bucket_kl_fused if fused else bucket_kl)(logits, targets, mask, reverse=True))


def distill_loss(student_logits, targets: TeacherTargets, input_ids, mask, loss: str,
                 ce_weight: float = 0.0, fused: bool = False) -> torch.Tensor:
    """fused: the chunked vocabulary pass (bf16 runs); False keeps the reference path, which
    the fp32 runs CI gates on use bit for bit."""
    value = LOSSES.get(loss)(student_logits, targets, mask, fused)
    if ce_weight:
        value = value + ce_weight * next_token_ce(student_logits, input_ids, mask)
    return value
