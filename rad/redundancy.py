"""RAD step 1, diagnosis: how well does the model draft for itself with attention layers
skipped? Measured by running self-speculative decoding over a fixed prompt set."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from rad.model import Decoder
from rad.speculative import SpecStats, self_speculative_generate


@dataclass(frozen=True)
class SpecSettings:
    gamma: int = 4
    max_new_tokens: int = 64
    stop_threshold: float | None = None  # Draft & Verify's adaptive stop; None = fixed gamma

    def as_dict(self) -> dict:
        return asdict(self)


def measure_skip_set(model: Decoder, prompts: Sequence[torch.Tensor], skip: Collection[int],
                     settings: SpecSettings, eos_token_ids: Collection[int] = ()) -> SpecStats:
    """Self-speculative decoding of every prompt (each (1, T)) with `skip`; stats summed."""
    total = SpecStats()
    for ids in prompts:
        res = self_speculative_generate(model, ids, skip, settings.max_new_tokens,
                                        settings.gamma, eos_token_ids, settings.stop_threshold)
        total = total.merge(res.stats)
    return total


def redundancy_profile(model: Decoder, prompts: Sequence[torch.Tensor], settings: SpecSettings,
                       eos_token_ids: Collection[int] = (), progress: bool = True) -> list[dict]:
    """One entry per layer: the draft's acceptance with that layer's attention alone skipped.
    A high acceptance means the model barely needs that attention layer."""
    out = []
    for layer in tqdm(range(model.cfg.n_layers), desc="redundancy profile", unit="layer",
                      disable=not progress):
        s = measure_skip_set(model, prompts, {layer}, settings, eos_token_ids)
        out.append({"layer": layer, "acceptance_rate": s.acceptance_rate,
                    "mean_accepted_length": s.mean_accepted_length, "drafted": s.drafted,
                    "accepted": s.accepted, "verify_steps": s.verify_steps,
                    "tokens_per_s": s.tokens_per_s})
    return out


def plot_profile(entries: list[dict], path, title: str, chosen: Collection[int] = ()) -> None:
    """Bar plot of acceptance per layer; `chosen` layers (a selection) drawn in another colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [e["layer"] for e in entries]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, len(layers) * 0.3), 5), sharex=True)
    colours = ["tab:red" if layer in set(chosen) else "tab:blue" for layer in layers]
    ax1.bar(layers, [e["acceptance_rate"] for e in entries], color=colours)
    ax1.set_ylabel("acceptance rate")
    ax1.set_ylim(0, 1)
    ax1.set_title(title, fontsize=9)
    ax2.bar(layers, [e["mean_accepted_length"] for e in entries], color=colours)
    ax2.set_ylabel("accepted / round")
    ax2.set_xlabel("attention layer skipped alone" + (" (red: selected)" if chosen else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
