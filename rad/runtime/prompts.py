"""Turning text prompts into left-padded token batches, optionally through the chat template."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rad.runtime.decode import left_pad


def render_prompt(tokenizer, text: str, chat: bool) -> str:
    """The exact string the model sees: the raw text, or one user turn in the chat template
    with the assistant's turn opened."""
    if not chat:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; drop --chat")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                         add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool,
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), (B, T) each, padded on the left."""
    # A chat template already carries its special tokens; don't let the tokenizer add a second BOS.
    rows = [tokenizer(render_prompt(tokenizer, p, chat), add_special_tokens=not chat)["input_ids"]
            for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("empty prompt")
    return left_pad(rows, pad_id)
