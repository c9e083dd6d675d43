"""What a finished run says first, as lines of text: from the metrics files the stages wrote (layout's paths).

Pure functions over `metrics/ingest.json` (a dict) and the typed `TrainSummary` and `EvalReport`, so
the command line and the run report say the same thing, and a test can check them without running anything.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2s import layout
from s2s.eval_records import DecodingScores, EvalReport
from s2s.promotion import ExportOutcome, GateOutcome
from s2s.train_records import TrainSummary

if TYPE_CHECKING:  # the registry pulls in MLflow; these lines are written without it
    from s2s.registry import Registered

LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counter.items(), key=lambda kv: -kv[1]) if n)


def data_line(ingest: dict[str, Any], training: TrainSummary | None = None) -> str:
    """Pairs read and kept per split, and every pair left out of training with its reason."""
    train = ingest.get("train", {})
    left_out = dict(train.get("dropped", {}))
    if training and training.train_pairs_too_long:
        left_out["longer than train.max_tokens"] = training.train_pairs_too_long
    moved = _counts(train.get("moved", {}))
    parts = [f"train {train.get('kept', 0):,} of {train.get('read', 0):,} pairs read"]
    if moved:
        parts[0] += f" ({moved} held out)"
    parts[0] += f"; left out: {_counts(left_out) or 'none'}"
    parts += [f"{split} {ingest[split].get('kept', 0):,}" for split in ("valid", "test") if split in ingest]
    return "; ".join(parts)


def training_line(training: TrainSummary) -> str:
    """Epochs, updates, time and speed, and whose weights the model holds (an epoch's or the average's)."""
    resumed = training.resumed_at_update
    line = (
        f"{training.epochs} epochs, {training.updates:,} updates"
        f"{f' (resumed at update {resumed:,})' if resumed else ''} in {duration(training.train_seconds)}, "
        f"{training.tokens_per_second:,.0f} tokens/s"
    )
    line += f"; kept: {training.kept} (valid {training.select_metric} {training.best_valid_score:.2f})"
    if training.average_valid_score is not None and training.kept_epoch is not None:
        line += f", not the average of the last epochs ({training.average_valid_score:.2f})"
    return line


def scores(values: EvalReport | DecodingScores, names: tuple[str, ...] = ("bleu", "chrf")) -> str:
    return "  ".join(f"{LABELS[name]} {values.score(name)}" for name in names)


def test_lines(report: EvalReport) -> list[tuple[str, str]]:
    """(label, text) for the served decoding's test scores, then one per `evaluate.also` decoding."""
    shown = ("bleu", "chrf", "ter")
    decoding = f"{report.decoding}; " if report.decoding else ""
    lines = [("test", f"{scores(report, shown)}  ({decoding}copying the source: BLEU {report.copy_source_bleu})")]
    lines += [(f"test {name}", scores(values, shown)) for name, values in report.also.items()]
    return lines


@dataclass(frozen=True)
class RunResult:
    """What one pipeline run did: the flow's result, from which its report and `s2s run`'s last lines are written."""

    stages_ran: dict[str, bool]  # stage -> ran (False: DVC found it unchanged)
    registered: Registered
    gate: GateOutcome
    metrics: EvalReport
    training: TrainSummary
    ingest: dict[str, Any]  # metrics/ingest.json


def run_lines(result: RunResult, workspace: Path) -> list[str]:
    """The lines `s2s run` ends with: what ran, on how much data, how training went, the scores, the registry."""
    reg, gate = result.registered, result.gate
    uri = reg.tracking_uri.replace(f"sqlite:///{workspace}/", "sqlite:///")  # as params.yaml says it: relative
    status = "new version" if reg.created else "unchanged, not registered again"
    rows = [
        ("stages", ", ".join(f"{name} {'ran' if did else 'skipped'}" for name, did in result.stages_ran.items())),
        ("data", data_line(result.ingest, result.training)),
        ("training", training_line(result.training)),
        *test_lines(result.metrics),
        ("metrics", f"{layout.EVAL_METRICS}, {layout.TRAIN_SUMMARY}, {layout.INGEST_STATS}"),
        ("MLflow run", f"{reg.run_id}  (mlflow ui --backend-store-uri {uri})"),
        ("model", f"models:/{reg.name}/{reg.version}  ({status})"),
        ("gate", f"{gate.decision}: {gate.reason}"),
    ]
    width = max(11, *(len(label) for label, _ in rows))  # the same columns run after run
    return ["s2s pipeline finished", *(f"  {label:<{width}} : {text}" for label, text in rows)]


def _export_line(export: ExportOutcome | None) -> str:
    if export is None:
        return ""
    if export.exported is None:
        return f"CTranslate2 export: none ({export.reason})\n\n"
    return f"CTranslate2 export ({export.quantization}): v{export.exported}, alias `{export.alias}`\n\n"


def markdown_report(result: RunResult, ui: str) -> str:
    """The run's report as Markdown (the flow's Prefect artifact), with links into the MLflow UI at `ui`."""
    metrics, registered, gate, training = result.metrics, result.registered, result.gate, result.training
    ran, ingest = result.stages_ran, result.ingest
    rows = "\n".join(f"| {stage} | {'ran' if did else 'skipped (unchanged)'} |" for stage, did in ran.items())
    also = "".join(f"| {label} | {text} |\n" for label, text in test_lines(metrics)[1:])  # evaluate.also
    run_link = f"{ui}/#/experiments/{registered.experiment_id}/runs/{registered.run_id}"
    version_link = f"{ui}/#/models/{registered.name}/versions/{registered.version}"
    vs = f"{gate.champion:.2f} (v{gate.champion_version})" if gate.champion is not None else "none"
    challenger = metrics.bleu if gate.challenger is None else gate.challenger
    return (
        f"# s2s pipeline run\n\n"
        f"| test set | this model | champion |\n|---|---|---|\n"
        f"| {gate.metric or 'bleu'} | {challenger} | {vs} |\n\n"
        f"**Gate: {gate.decision}** — {gate.reason}\n\n"
        f"{_export_line(gate.export)}"
        f"| metric | value |\n|---|---|\n"
        f"| BLEU | {metrics.bleu} |\n| chrF | {metrics.chrf} |\n| TER (lower is better) | {metrics.ter} |\n"
        f"| ROUGE-1 / ROUGE-2 / ROUGE-L (F) | {metrics.rouge1} / {metrics.rouge2} / {metrics.rougeL} |\n"
        f"| copy-the-source BLEU | {metrics.copy_source_bleu} |\n{also}\n"
        f"`{metrics.bleu_signature}`\n\n"
        f"Training: {training_line(training)}\n\nData: {data_line(ingest, training)}\n\n"
        f"Model **[{registered.name} v{registered.version}]({version_link})** "
        f"({'new' if registered.created else 'unchanged, already registered'}); "
        f"MLflow run [{registered.run_id}]({run_link}) in `{registered.tracking_uri}`.\n\n"
        f"| stage | |\n|---|---|\n{rows}\n"
    )


def sample_rows(workspace: Path, n: int = 10) -> list[dict[str, str]]:
    """The first `n` test items: source, reference, hypothesis (and id and further references, where the data has them)."""
    with (workspace / layout.HYPOTHESES).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return rows[:n]
