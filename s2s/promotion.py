"""The promotion gate's decision, as a pure function: scores in, verdict and reason out.

The registry module applies the verdict (aliases and tags); keeping the rule
here makes it testable without MLflow and readable in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None  # None when there is no champion yet
    champion_version: str | None


@dataclass(frozen=True)
class Floor:
    """What any champion must beat on the test set: copying the source unchanged, and a configured minimum."""

    copy_source: float
    min_score: float

    @property
    def value(self) -> float:
        return max(self.copy_source, self.min_score)

    def describe(self, metric: str) -> str:
        return f"{metric} of copying the source {self.copy_source:.2f}, promote.min_score {self.min_score:.2f}"


def decide(
    metric: str,
    challenger: float,
    champion: float | None,
    champion_version: str | None,
    margin: float,
    floor: Floor | None = None,
) -> Decision:
    """Never promote at or below the floor; above it, promote when there is no champion or on a win by more than `margin`."""
    if floor is not None and challenger <= floor.value:
        reason = f"{metric} {challenger:.2f} is not above the floor {floor.value:.2f} ({floor.describe(metric)})"
        return Decision(False, reason, metric, challenger, champion, champion_version)
    if champion is None or champion_version is None:
        return Decision(True, "first version: no champion yet", metric, challenger, None, None)
    gain = challenger - champion
    if gain > margin:
        reason = (
            f"{metric} {challenger:.2f} beats champion v{champion_version} ({champion:.2f}) by {gain:+.2f} > margin {margin:.2f}"
        )
        return Decision(True, reason, metric, challenger, champion, champion_version)
    reason = (
        f"{metric} {challenger:.2f} vs champion v{champion_version} ({champion:.2f}): "
        f"{gain:+.2f} does not exceed margin {margin:.2f}"
    )
    return Decision(False, reason, metric, challenger, champion, champion_version)
