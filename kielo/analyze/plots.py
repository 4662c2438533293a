"""The report's figures (matplotlib, imported only when a report is written)."""

from __future__ import annotations

import numpy as np

from kielo.report import Figure
from kielo.report.figures import pyplot as _pyplot
from kielo.report.figures import to_figure

COLORS = {"trained": "#2e7d32", "masked": "#9e9e9e", "padding": "#ef9a9a"}


def length_histograms(split: str, lengths: dict[str, np.ndarray], max_length: int) -> Figure:
    """Prompt, response and whole-example token lengths, with data.max_length and p99 marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key in zip(axes, ("prompt", "response", "total"), strict=True):
        values = lengths[key]
        ax.hist(values, bins=40, color="#5c6bc0")
        if len(values):
            p99 = float(np.percentile(values, 99))
            ax.axvline(p99, color="#333", linestyle=":", label=f"p99 = {p99:.0f}")
        if key == "total":
            ax.axvline(max_length, color="#c62828", linestyle="--", label=f"max_length = {max_length}")
        ax.set_title(f"{split}: {key} tokens")
        ax.set_xlabel("tokens")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("examples")
    return to_figure(fig, f"lengths_{split}", tight=False)


def token_budget(budgets: dict[str, dict]) -> Figure:
    """Stacked shares of trained / masked / padding tokens per split and batching mode."""
    plt = _pyplot()
    labels, rows = [], []
    for split, budget in budgets.items():
        for mode, counts in budget["modes"].items():
            used = " (training)" if mode == budget["training_uses"] else ""
            labels.append(f"{split}: {mode.replace('_', ' ')}{used}")
            rows.append([counts[f"{k}_share"] for k in COLORS])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.2))
    left = np.zeros(len(labels))
    for k, key in enumerate(COLORS):
        share = np.array([r[k] for r in rows])
        ax.barh(labels, share, left=left, color=COLORS[key], label=key)
        left += share
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the micro-batches' token slots")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=9)
    return to_figure(fig, "token_budget", tight=False)


def tokenizers(efficiency: dict[str, dict]) -> Figure:
    """Characters per token, tokens per word and share of words in 3+ pieces, per tokenizer."""
    plt = _pyplot()
    names = list(efficiency)
    metrics = (
        ("chars_per_token", "characters per token (higher is better)"),
        ("tokens_per_word", "tokens per word (lower is better)"),
        ("words_3plus_pieces_share", "words split into 3+ pieces (lower is better)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(names) + 1.8))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        values = [efficiency[n][key] or 0 for n in names]
        ax.barh(names, values, color="#00897b")
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    return to_figure(fig, "tokenizers", tight=False)
