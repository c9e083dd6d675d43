"""The promotion gate's decision, as a pure function: scores in, verdict and reason out.

The registry module applies the verdict (aliases and tags); keeping the rule
here makes it testable without MLflow and readable in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.metrics import metric
from s2s.task import Task

# A gate's verdicts, as the version's s2s.gate.decision tag and the flow's result say them.
PROMOTED, REJECTED, REFUSED, SKIPPED = "promoted", "rejected", "refused", "skipped"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None  # None when there is no champion yet
    champion_version: str | None
    refused: bool = False  # not compared at all: the champion holds another task

    @property
    def verdict(self) -> str:
        return PROMOTED if self.promote else REFUSED if self.refused else REJECTED


@dataclass(frozen=True)
class ExportOutcome:
    """What promote.export did with a new champion: its CTranslate2 version and alias, or why there is none."""

    exported: str | None  # the version registered; None: not exported
    quantization: str
    alias: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class GateOutcome:
    """What the flow's gate did: a verdict (PROMOTED, REJECTED, REFUSED), SKIPPED, or "unchanged (<earlier verdict>)"."""

    decision: str
    reason: str
    metric: str | None = None
    challenger: float | None = None
    champion: float | None = None
    champion_version: str | None = None
    export: ExportOutcome | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    @classmethod
    def of(cls, decision: Decision) -> GateOutcome:
        return cls(decision.verdict, decision.reason, decision.metric, decision.challenger, decision.champion,
                   decision.champion_version)  # fmt: skip


@dataclass(frozen=True)
class Floor:
    """What any champion must beat on the test set: copying the source unchanged, and a configured bound.

    `bound` is promote.min_score for metrics where higher is better, promote.max_score (None: none) where lower is.
    """

    metric: str
    copy_source: float
    bound: float | None

    @property
    def value(self) -> float:
        direction = metric(self.metric)
        bounds = [self.copy_source] + ([self.bound] if self.bound is not None else [])
        return max(bounds) if direction.higher_is_better else min(bounds)

    def passes(self, score: float) -> bool:
        return metric(self.metric).better(score, self.value)

    def describe(self) -> str:
        key = "min_score" if metric(self.metric).higher_is_better else "max_score"
        bound = "none" if self.bound is None else f"{self.bound:.2f}"
        return f"{self.metric} of copying the source {self.copy_source:.2f}, promote.{key} {bound}"


def decide(
    name: str,
    challenger: float,
    champion: float | None,
    champion_version: str | None,
    margin: float,
    floor: Floor | None = None,
) -> Decision:
    """Never promote unless better than the floor; then promote when there is no champion or on a win by more than `margin`.

    "Better" and "win" follow the metric's direction: for TER (lower is better) a challenger at 40 beats a champion at 45 by 5.
    """
    direction = metric(name)
    if floor is not None and not floor.passes(challenger):
        reason = f"{name} {challenger:.2f} is not better than the floor {floor.value:.2f} ({floor.describe()})"
        return Decision(False, reason, name, challenger, champion, champion_version)
    if champion is None or champion_version is None:
        return Decision(True, "first version: no champion yet", name, challenger, None, None)
    gain = direction.gain(challenger, champion)
    lower = "" if direction.higher_is_better else ", lower is better"
    if gain > margin:
        reason = (
            f"{name} {challenger:.2f} beats champion v{champion_version} ({champion:.2f}{lower}) by {gain:+.2f} "
            f"> margin {margin:.2f}"
        )
        return Decision(True, reason, name, challenger, champion, champion_version)
    reason = (
        f"{name} {challenger:.2f} vs champion v{champion_version} ({champion:.2f}{lower}): "
        f"{gain:+.2f} does not exceed margin {margin:.2f}"
    )
    return Decision(False, reason, name, challenger, champion, champion_version)


def task_conflict(model: str, challenger: Task, champion: Task | None, champion_version: str) -> str | None:
    """Why a challenger of task `challenger` must not be compared with the champion of `model`; None when it may.

    A registered model holds one task: scores of models of two tasks on one test set say nothing about either.
    """
    own = (f"name this data's model with registry.model_name, or leave it null for the name derived from the data "
           f"({challenger.model_name()})")  # fmt: skip
    if champion is None:
        return (
            f"champion v{champion_version} of {model} records no task (registered before s2s recorded one), so it cannot "
            f"be told to hold this one ({challenger.describe()}): `s2s promote VERSION` crowns a version by hand if it "
            f"does; else {own}"
        )
    differs = challenger.differences(champion)
    if not differs:
        return None
    return (
        f"{model} holds another task than this model: champion v{champion_version} is {champion.describe()}, this one "
        f"{challenger.describe()} ({'; '.join(differs)}); the gate compares models of one task only: {own}"
    )


def refuse(name: str, reason: str, champion_version: str) -> Decision:
    return Decision(False, reason, name, float("nan"), None, champion_version, refused=True)
