"""Promotion gate, manual promotion and rollback against a real MLflow registry (SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from s2s.promotion import Floor, decide
from s2s.registry import (
    CHAMPION,
    DECISION_TAG,
    PREVIOUS_TAG,
    REASON_TAG,
    cached_score,
    get_alias,
    promote,
    rollback,
    run_gate,
)

NAME = "gate-test"


def test_decide_rules() -> None:
    first = decide("bleu", 20.0, None, None, 0.5)
    assert first.promote and first.reason == "first version: no champion yet"
    worse = decide("bleu", 30.2, 30.0, "4", 0.5)
    assert not worse.promote and worse.reason == "bleu 30.20 vs champion v4 (30.00): +0.20 does not exceed margin 0.50"
    better = decide("chrf", 31.0, 30.0, "4", 0.5)
    assert better.promote and better.reason == "chrf 31.00 beats champion v4 (30.00) by +1.00 > margin 0.50"


def test_decide_floor_stops_a_first_version_and_names_both_parts() -> None:
    floor = Floor("bleu", copy_source=0.67, bound=0.0)
    junk = decide("bleu", 0.01, None, None, 0.0, floor)
    assert not junk.promote
    assert junk.reason == "bleu 0.01 is not better than the floor 0.67 (bleu of copying the source 0.67, promote.min_score 0.00)"
    assert not decide("bleu", 0.67, None, None, 0.0, floor).promote  # at the floor is not better than it
    assert decide("bleu", 0.68, None, None, 0.0, floor).promote
    high = Floor("bleu", copy_source=0.67, bound=25.0)
    assert not decide("bleu", 24.0, 10.0, "1", 0.0, high).promote  # beats the champion, still under min_score
    assert decide("bleu", 26.0, 10.0, "1", 0.0, high).promote


def test_ter_is_lower_better_in_the_gate_and_its_floor() -> None:
    better = decide("ter", 40.0, 45.0, "2", 1.0)
    assert better.promote and better.reason == "ter 40.00 beats champion v2 (45.00, lower is better) by +5.00 > margin 1.00"
    worse = decide("ter", 46.0, 45.0, "2", 0.0)
    assert not worse.promote
    assert worse.reason == "ter 46.00 vs champion v2 (45.00, lower is better): -1.00 does not exceed margin 0.00"
    # Copying the source has a TER of 90: a champion must be below it, and below promote.max_score when one is set.
    floor = Floor("ter", copy_source=90.0, bound=None)
    assert decide("ter", 89.0, None, None, 0.0, floor).promote
    junk = decide("ter", 95.0, None, None, 0.0, floor)
    assert not junk.promote
    assert junk.reason == "ter 95.00 is not better than the floor 90.00 (ter of copying the source 90.00, promote.max_score none)"
    assert not decide("ter", 60.0, None, None, 0.0, Floor("ter", copy_source=90.0, bound=50.0)).promote


def test_gate_on_ter_keeps_the_lower_score(client: MlflowClient) -> None:
    scores = {"1": 50.0, "2": 55.0, "3": 42.0}
    gate = lambda v: run_gate(client, NAME, v, "ter", 0.5, scores.__getitem__)  # noqa: E731
    assert gate("1").promote and champion(client) == "1"
    assert not gate("2").promote and champion(client) == "1"  # a higher TER is worse
    assert gate("3").promote and champion(client) == "3"
    assert tags(client, "3")["s2s.gate.metric"] == "ter"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    client.create_registered_model(NAME)
    for _ in range(4):
        client.create_model_version(NAME, source=str(tmp_path))
    return client


def tags(client: MlflowClient, version: str) -> dict[str, str]:
    return client.get_model_version(NAME, version).tags


def champion(client: MlflowClient) -> str:
    mv = get_alias(client, NAME, CHAMPION)
    assert mv is not None
    return str(mv.version)


def test_gate_promotes_first_rejects_worse_promotes_better_and_rolls_back(client: MlflowClient) -> None:
    scores = {"1": 30.0, "2": 29.0, "3": 31.5, "4": 31.6}
    gate = lambda v: run_gate(client, NAME, v, "bleu", 0.5, scores.__getitem__)  # noqa: E731

    assert gate("1").promote and champion(client) == "1"
    assert tags(client, "1")[REASON_TAG] == "first version: no champion yet"

    assert not gate("2").promote and champion(client) == "1"
    t = tags(client, "2")
    assert t[DECISION_TAG] == "rejected"
    assert t[REASON_TAG] == "bleu 29.00 vs champion v1 (30.00): -1.00 does not exceed margin 0.50"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"

    assert gate("3").promote and champion(client) == "3"
    assert tags(client, "3")[DECISION_TAG] == "promoted" and tags(client, "3")[PREVIOUS_TAG] == "1"

    # Within the margin: not promoted, even though slightly better.
    assert not gate("4").promote and champion(client) == "3"

    assert rollback(client, NAME) == ("3", "1")
    assert champion(client) == "1"
    assert tags(client, "3")[DECISION_TAG] == "rolled back" and tags(client, "1")[DECISION_TAG] == "restored by rollback"
    with pytest.raises(Exception, match="replaced no earlier champion"):
        rollback(client, NAME)


def test_failed_gate_and_manual_promotion(client: MlflowClient) -> None:
    run_gate(client, NAME, "1", "bleu", 0.0, lambda v: 10.0)

    def broken(version: str) -> float:
        raise RuntimeError("scoring died")

    with pytest.raises(RuntimeError, match="scoring died"):
        run_gate(client, NAME, "2", "bleu", 0.0, broken)
    assert champion(client) == "1" and DECISION_TAG not in tags(client, "2")

    replaced = promote(client, NAME, "2", "hotfix")
    assert replaced is not None and str(replaced.version) == "1"
    assert champion(client) == "2"
    assert tags(client, "2")[DECISION_TAG] == "promoted by hand" and tags(client, "2")[REASON_TAG] == "hotfix"
    assert rollback(client, NAME) == ("2", "1")


def test_gate_with_a_floor_never_crowns_junk_and_decodes_no_champion_for_it(client: MlflowClient) -> None:
    scored: list[str] = []

    def scorer(version: str) -> float:
        scored.append(version)
        return {"1": 0.01, "2": 12.0, "3": 0.5}[version]

    floor = Floor("bleu", copy_source=0.67, bound=0.0)
    assert not run_gate(client, NAME, "1", "bleu", 0.0, scorer, floor).promote
    assert get_alias(client, NAME, CHAMPION) is None  # the first version too: junk is never champion
    assert tags(client, "1")[DECISION_TAG] == "rejected" and tags(client, "1")["s2s.gate.floor"] == "0.67"
    assert run_gate(client, NAME, "2", "bleu", 0.0, scorer, floor).promote and champion(client) == "2"
    assert not run_gate(client, NAME, "3", "bleu", 0.0, scorer, floor).promote and champion(client) == "2"
    assert scored == ["1", "2", "3"]  # below the floor, the champion was not decoded


def test_cached_score_computes_once_per_version_and_tag(client: MlflowClient) -> None:
    calls: list[int] = []

    def compute() -> float:
        calls.append(1)
        return 31.25

    assert cached_score(client, NAME, "1", "s2s.test_score.bleu.abc", compute) == 31.25
    assert cached_score(client, NAME, "1", "s2s.test_score.bleu.abc", compute) == 31.25
    assert len(calls) == 1 and tags(client, "1")["s2s.test_score.bleu.abc"] == "31.25"
    cached_score(client, NAME, "1", "s2s.test_score.bleu.other-test-set", compute)
    assert len(calls) == 2


def test_the_gate_refuses_a_champion_of_another_task_and_says_what_differs_and_how_to_name_the_model(
    client: MlflowClient,
) -> None:
    from s2s.task import Task

    en_de, en_fr = Task("en", "de", "builtin"), Task("en", "fr", "")
    for version, task in (("1", en_de), ("2", en_fr)):
        for key, value in task.tags().items():
            client.set_model_version_tag(NAME, version, key, value)
    scored: list[str] = []

    def scorer(version: str) -> float:
        scored.append(version)
        return {"1": 10.0, "2": 50.0, "3": 60.0, "4": 70.0}[version]

    assert run_gate(client, NAME, "1", "bleu", 0.0, scorer, task=en_de).promote and champion(client) == "1"
    refused = run_gate(client, NAME, "2", "bleu", 0.0, scorer, task=en_fr)
    assert not refused.promote and refused.refused and refused.verdict == "refused" and champion(client) == "1"
    assert refused.reason == (
        "gate-test holds another task than this model: champion v1 is en->de, data builtin, this one en->fr, data "
        "(own files, unnamed) (ingest.tgt_lang fr vs de; ingest.dataset (none) vs builtin); the gate compares models "
        "of one task only: name this data's model with registry.model_name, or leave it null for the name derived from "
        "the data (s2s-en-fr)"
    )
    assert scored == ["1"]  # neither model was decoded for a comparison that means nothing
    assert tags(client, "2")[DECISION_TAG] == "refused" and tags(client, "2")["s2s.gate.challenger_score"] == ""
    # The same task is compared as always, and a champion that records no task is never compared either.
    assert run_gate(client, NAME, "3", "bleu", 0.0, scorer, task=en_de).promote and champion(client) == "3"
    client.set_registered_model_alias(NAME, CHAMPION, "4")  # v4 has no task tags: registered before s2s kept them
    legacy = run_gate(client, NAME, "1", "bleu", 0.0, scorer, task=en_de)
    assert legacy.refused and "champion v4 of gate-test records no task" in legacy.reason and champion(client) == "4"


def test_exact_match_gates_higher_is_better_above_copying_the_source() -> None:
    assert decide("exact_match", 41.0, 40.0, "3", 0.0).promote
    assert not decide("exact_match", 40.0, 41.0, "3", 0.0).promote
    floor = Floor("exact_match", copy_source=5.0, bound=0.0)  # copying the input is sometimes right (identity tasks)
    junk = decide("exact_match", 5.0, None, None, 0.0, floor)
    assert not junk.promote and "floor 5.00" in junk.reason
