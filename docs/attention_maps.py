"""Draw two models' attention on the same test sentence, side by side, for the README.

    .venv/bin/python docs/attention_maps.py /tmp/s2s-archs/ws-bahdanau-gru /tmp/s2s-archs/ws-luong-lstm --sentence 4

Each workspace is one of `benchmarks/multi30k.py`'s (its model and tokenizer); the sentence is a line number
(from 1) of the prepared test split. Greedy decoding; writes docs/attention-bahdanau-luong.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.layout import MODEL_DIR, MODEL_FILE, PREPARED_DIR, TOKENIZER_DIR, read_prepared  # noqa: E402
from s2s.translate import Translator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workspaces", type=Path, nargs="+", help="benchmark workspaces, one panel each")
    parser.add_argument("--sentence", type=int, default=1, help="test sentence number, from 1")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "attention-bahdanau-luong.png")
    args = parser.parse_args()
    source, reference = read_prepared(args.workspaces[0] / PREPARED_DIR, "test")[args.sentence - 1]
    panels = []
    for ws in args.workspaces:
        translator = Translator.load(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, "cpu")
        [translation] = translator.translate_with_attention([source])
        panels.append((ws.name.removeprefix("ws-"), translation))
        print(f"{ws.name}: {translation.text}")
    print(f"reference: {reference}")
    cols = panels[0][1].source_tokens
    rows = max(len(t.tokens) + 1 for _, t in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(0.42 * len(cols) * len(panels) + 3, 0.36 * rows + 2.2))
    for ax, (name, t) in zip(axes, panels, strict=True):
        image = ax.imshow(t.attention, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=70, fontsize=8)
        labels = [*t.tokens, "</s>"][: len(t.attention)]
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=axes, fraction=0.03)
    fig.suptitle(f"{source}\n(reference: {reference})", fontsize=9)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
