"""What a finished run says first, as lines of text: from the metrics files the stages wrote (layout's paths).

Pure functions over the JSON documents of `metrics/ingest.json`, `metrics/train.json` and `metrics/eval.json`, so
the command line and the run report say the same thing, and a test can check them without running anything.
"""

from __future__ import annotations

from typing import Any

LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counter.items(), key=lambda kv: -kv[1]) if n)


def data_line(ingest: dict[str, Any], training: dict[str, Any] | None = None) -> str:
    """Pairs read and kept per split, and every pair left out of training with its reason."""
    train = ingest.get("train", {})
    left_out = dict(train.get("dropped", {}))
    if training and training.get("train_pairs_too_long"):
        left_out["longer than train.max_tokens"] = int(training["train_pairs_too_long"])
    moved = _counts(train.get("moved", {}))
    parts = [f"train {train.get('kept', 0):,} of {train.get('read', 0):,} pairs read"]
    if moved:
        parts[0] += f" ({moved} held out)"
    parts[0] += f"; left out: {_counts(left_out) or 'none'}"
    parts += [f"{split} {ingest[split].get('kept', 0):,}" for split in ("valid", "test") if split in ingest]
    return "; ".join(parts)


def training_line(training: dict[str, Any]) -> str:
    """Epochs, updates, time and speed, the best epoch and which weights the model holds."""
    resumed = training.get("resumed_at_update", 0)
    line = (
        f"{training['epochs']} epochs, {training['updates']:,} updates"
        f"{f' (resumed at update {resumed:,})' if resumed else ''} in {duration(float(training['train_seconds']))}, "
        f"{float(training['tokens_per_second']):,.0f} tokens/s; best epoch {training['best_epoch']}"
    )
    kept = training.get("kept", f"epoch {training['best_epoch']}")
    average = training.get("average_valid_score")
    metric = training.get("select_metric", "bleu")
    line += f"; kept: {kept} (valid {metric} {float(training['best_valid_score']):.2f})"
    if average is not None and not str(kept).startswith("average"):
        line += f", not the average of the last epochs ({float(average):.2f})"
    return line


def scores(values: dict[str, Any], names: tuple[str, ...] = ("bleu", "chrf")) -> str:
    return "  ".join(f"{LABELS[name]} {values[name]}" for name in names if name in values)


def test_lines(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) for the served decoding's test scores, then one per `evaluate.also` decoding."""
    decoding = metrics.get("decoding", "")
    shown = ("bleu", "chrf", "ter") if "ter" in metrics else ("bleu", "chrf")
    head = (
        f"{scores(metrics, shown)}  ({decoding + '; ' if decoding else ''}copying the source: BLEU {metrics['copy_source_bleu']})"
    )
    lines = [("test", head)]
    for name, values in metrics.get("also", {}).items():
        lines.append((f"test {name}", scores(values, shown)))
    return lines
