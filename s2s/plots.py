"""Attention maps: which source subwords each output subword looked at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on
import matplotlib.pyplot as plt

from s2s.translate import Translation


def attention_heatmap(translation: Translation, path: Path, title: str | None = None) -> Path:
    """Save one sentence's source-target attention as a PNG; rows are output tokens (with </s>)."""
    if translation.attention is None:
        raise ValueError("this model has no attention to draw (model.rnn.decoder is sutskever or cho)")
    rows = [*translation.tokens, "</s>"][: len(translation.attention)]
    cols = translation.source_tokens
    fig, ax = plt.subplots(figsize=(0.45 * len(cols) + 2.5, 0.4 * len(rows) + 2.0))
    image = ax.imshow(translation.attention, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=70, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title or translation.text, fontsize=9, wrap=True)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
