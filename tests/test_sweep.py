"""s2s.sweep and flows.sweep: the search-space file, the study's queue, results, and a tiny sweep run for real."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from support import BIN, TINY_PARAMS, deep_merge, make_workspace

from s2s import presets, sweep
from s2s.config import parse_params

BASE = parse_params(TINY_PARAMS).model_dump(mode="json")
SPACE: dict[str, Any] = {
    "trials": 3,
    "fixed": {"train.epochs": 2},
    "space": {
        "train.lr": {"low": 0.001, "high": 0.05, "log": True},
        "model.rnn.hidden": {"choices": [32, 48]},
        "train.warmup_steps": {"low": 0, "high": 20, "step": 10},
    },
}


def spec_of(raw: dict[str, Any]) -> sweep.SweepSpec:
    return sweep.parse_spec(raw, "space.yaml")


# ------------------------------------------------------------------------------ the search-space file


def test_ranges_are_ints_when_their_bounds_are_and_floats_otherwise() -> None:
    spec = spec_of(SPACE)
    assert isinstance(spec.space["train.warmup_steps"], sweep.IntRange)
    assert isinstance(spec.space["train.lr"], sweep.FloatRange) and spec.space["train.lr"].log
    assert isinstance(spec.space["model.rnn.hidden"], sweep.Choices)
    assert isinstance(spec_of({"space": {"train.clip": {"low": 1.0, "high": 2.0}}}).space["train.clip"], sweep.FloatRange)
    assert spec.pruner.kind == "hyperband" and spec.sampler.seed == 1 and spec.baseline


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"space": {"train.lr": {"low": 0.1, "high": 0.01}}}, "low must be below high"),
        ({"space": {"train.lr": {"low": 0.0, "high": 0.01, "log": True}}}, "log-scale range needs low > 0"),
        ({"space": {"train.lr": {"low": 0.001, "high": 0.01}}, "trails": 4}, "trails: unknown key"),
        ({"space": {"train.lr": {"low": 0.001, "high": 0.01, "scale": "log"}}}, "space.train.lr.scale: unknown key"),
        ({"space": {}}, "\n  space: Dictionary should have at least 1 item"),
        ({"space": {"train.lr": {"choices": []}}}, "space.train.lr.choices: List should have at least 1 item"),
        ({"space": {"train.lr": {"low": 1e-3, "high": 1e-2}}, "pruner": {"kind": "asha"}}, "pruner.kind: Input should be"),
    ],
)
def test_a_bad_search_space_file_is_refused_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(sweep.SweepError, match="space.yaml") as err:
        spec_of(raw)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": {"low": 0.001, "high": 0.01}}, "train.lrr: no such param"),
        ({"registry.model_name": {"choices": ["a", "b"]}}, "only recipe params can be swept"),
        ({"model.transformer": {"choices": [1, 2]}}, "model.transformer is a section"),
        ({"model.arch": {"choices": ["rnn", "lstm"]}}, "space.model.arch = 'lstm'"),
        ({"train.label_smoothing": {"low": 0.0, "high": 1.5}}, "space.train.label_smoothing = 1.5"),
    ],
)
def test_keys_and_values_are_checked_against_params_before_any_trial(space: dict[str, Any], message: str) -> None:
    with pytest.raises(sweep.SweepError) as err:
        sweep.check_spec(spec_of({"space": space}), BASE, "space.yaml")
    assert message in str(err.value)


def test_fixed_values_are_checked_too() -> None:
    spec = spec_of({"space": {"train.lr": {"low": 0.001, "high": 0.01}}, "fixed": {"train.epochs": 0}})
    with pytest.raises(sweep.SweepError, match=r"space.yaml: fixed[\s\S]*train.epochs"):
        sweep.check_spec(spec, BASE, "space.yaml")


def test_trial_params_are_the_base_then_fixed_then_the_trial_values() -> None:
    spec = spec_of(SPACE)
    params = sweep.trial_params(BASE, spec, {"train.lr": 0.005, "model.rnn.hidden": 32, "train.warmup_steps": 10})
    assert (params.train.lr, params.model.rnn.hidden, params.train.warmup_steps) == (0.005, 32, 10)
    assert params.train.epochs == 2  # fixed
    assert params.model.rnn.emb_dim == TINY_PARAMS["model"]["rnn"]["emb_dim"]  # the base


# ------------------------------------------------------------------------------ the study and its queue


def new_study(tmp_path: Path, spec: sweep.SweepSpec, name: str = "s") -> optuna.Study:
    study, created = sweep.open_study(name, f"sqlite:///{tmp_path / 'sweeps.db'}", spec, "bleu", BASE)
    assert created
    return study


def test_the_baseline_is_queued_first_with_the_base_values(tmp_path: Path) -> None:
    spec = spec_of({**SPACE, "space": {**SPACE["space"], "model.rnn.hidden": {"choices": [32, 48]}}})
    study = new_study(tmp_path, spec)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 3
    trial = sweep.take_queued(study)
    assert trial is not None and trial.number == 0
    assert sweep.suggest(trial, spec) == {"train.lr": 0.02, "model.rnn.hidden": 48, "train.warmup_steps": 0}
    assert trial.user_attrs[sweep.BASELINE_ATTR] is True


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_shipped_search_space_is_valid_over_its_base_and_runs_the_recipe_as_its_baseline(path: Path) -> None:
    """A sweeps/ file's base is a checkout with multi30k and transformer-cpu applied (its header says so)."""
    base = deep_merge(deep_merge(BASE, presets.find("multi30k").values), presets.find("transformer-cpu").values)
    spec = sweep.load_spec(path)
    sweep.check_spec(spec, base, str(path))
    assert sweep.baseline_values(base, spec) is not None  # the recipe as it is lies inside the space: trial 0


def test_no_baseline_when_a_base_value_lies_outside_the_space(tmp_path: Path) -> None:
    spec = spec_of({**SPACE, "space": {**SPACE["space"], "train.lr": {"low": 0.1, "high": 0.5}}})
    study = new_study(tmp_path, spec)
    trial = sweep.take_queued(study)
    assert trial is not None and trial.user_attrs[sweep.BASELINE_ATTR] is False
    assert 0.1 <= sweep.suggest(trial, spec)["train.lr"] <= 0.5


def test_two_workers_take_each_queued_trial_once_and_never_create_one(tmp_path: Path) -> None:
    spec = spec_of(SPACE)
    study = new_study(tmp_path, spec)
    other = sweep.load_study("s", f"sqlite:///{tmp_path / 'sweeps.db'}", spec, "bleu")  # a second worker's handle
    taken = [sweep.take_queued(handle) for handle in (study, other, study, other)]
    assert [t.number if t else None for t in taken] == [0, 1, 2, None]
    assert len(study.get_trials()) == 3


def test_trials_sampled_in_fresh_processes_differ(tmp_path: Path) -> None:
    """Each trial is a new flow run: a sampler rebuilt from one seed must not draw the same values every time."""
    spec = spec_of({**SPACE, "baseline": False})
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    new_study(tmp_path, spec)
    drawn = []
    for _ in range(3):
        handle = sweep.load_study("s", url)  # as a new process would: a fresh sampler from the stored seed
        trial = sweep.take_queued(handle)
        assert trial is not None
        drawn.append(sweep.suggest(trial, spec)["train.lr"])
        handle.tell(trial, 1.0)
    assert len(set(drawn)) == 3


def test_loading_a_study_checks_its_space_and_metric(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    new_study(tmp_path, spec_of(SPACE))
    with pytest.raises(sweep.SweepError, match="another search space"):
        sweep.load_study("s", url, spec_of({**SPACE, "trials": 9}), "bleu")
    with pytest.raises(sweep.SweepError, match="selects on bleu, not train.select_metric=chrf"):
        sweep.load_study("s", url, spec_of(SPACE), "chrf")
    with pytest.raises(sweep.SweepError, match=r"no study 'other' .*studies there: s"):
        sweep.load_study("other", url)


def test_queue_extends_a_study_up_to_the_count_asked(tmp_path: Path) -> None:
    study = new_study(tmp_path, spec_of(SPACE))
    assert sweep.queue(study, 5) == 2 and sweep.queue(study, 4) == 0
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 5


def test_an_interrupted_trial_is_queued_again_with_its_values(tmp_path: Path) -> None:
    spec = spec_of(SPACE)
    study = new_study(tmp_path, spec)
    trial = sweep.take_queued(study)
    assert trial is not None
    values = sweep.suggest(trial, spec)
    study.tell(trial, state=TrialState.FAIL)
    sweep.requeue(study, trial)
    for _ in range(2):
        assert sweep.take_queued(study) is not None  # the two queued before it
    again = sweep.take_queued(study)
    assert again is not None and sweep.suggest(again, spec) == values


# ------------------------------------------------------------------------------ results


def finished_study(tmp_path: Path) -> optuna.Study:
    """A study with made-up finished trials: two complete, one pruned, one failed."""
    spec = spec_of({**SPACE, "trials": 1, "baseline": False})
    study = new_study(tmp_path, spec)
    study.tell(sweep.take_queued(study), state=TrialState.FAIL)  # type: ignore[arg-type]
    dists = {"train.lr": optuna.distributions.FloatDistribution(0.001, 0.05, log=True),
             "model.rnn.hidden": optuna.distributions.CategoricalDistribution([32, 48]),
             "train.warmup_steps": optuna.distributions.IntDistribution(0, 20, step=10)}  # fmt: skip
    for lr, hidden, value, state in ((0.01, 32, 5.0, TrialState.COMPLETE), (0.02, 48, 7.5, TrialState.COMPLETE),
                                     (0.002, 32, 1.0, TrialState.PRUNED)):  # fmt: skip
        study.add_trial(create_trial(params={"train.lr": lr, "model.rnn.hidden": hidden, "train.warmup_steps": 10},
                                     distributions=dists, value=value if state == TrialState.COMPLETE else None,
                                     intermediate_values={1: value}, state=state))  # fmt: skip
    return study


def test_trial_table_cost_and_best_preset(tmp_path: Path) -> None:
    study = finished_study(tmp_path)
    rows = sweep.trial_rows(study)
    assert [(r["trial"], r["state"], r["value"]) for r in rows] == [
        (0, "fail", None), (1, "complete", 5.0), (2, "complete", 7.5), (3, "pruned", 1.0)]  # fmt: skip
    assert rows[2]["model.rnn.hidden"] == 48 and rows[2]["epochs"] == 1
    assert sweep.cost(study)["trials"] == {"fail": 1, "complete": 2, "pruned": 1}
    assert "| trial | state | value |" in sweep.markdown_table(rows)

    path = tmp_path / "presets" / "best.yaml"
    path.parent.mkdir()
    path.write_text(sweep.best_preset(study, "best"))
    preset = presets.read(path)  # what `s2s run --preset FILE` reads: validated, unknown keys refused
    assert preset.summary.startswith("best trial 2 of sweep 's' (valid bleu 7.50)")
    assert set(preset.values) == set(sweep.SECTIONS)
    assert preset.values["train"]["lr"] == 0.02 and preset.values["model"]["rnn"]["hidden"] == 48
    assert preset.values["train"]["epochs"] == 2  # fixed by the sweep
    assert preset.values["model"]["rnn"]["emb_dim"] == TINY_PARAMS["model"]["rnn"]["emb_dim"]  # the recipe it ran
    text = path.read_text()
    assert "lr: 0.02  # swept: 0.001..0.05 log" in text and "epochs: 2  # fixed by the sweep" in text

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(deep_merge(BASE, {"train": {"lr": 0.5}})))
    changed = presets.apply(params, [preset])
    assert "train.lr: 0.5 -> 0.02" in changed and parse_params(yaml.safe_load(params.read_text())).train.lr == 0.02


def test_plots_are_written(tmp_path: Path) -> None:
    study = finished_study(tmp_path)
    made = {p.name for p in sweep.write_plots(study, tmp_path / "plots")}
    assert {"optimization_history.png", "intermediate_values.png"} <= made
    assert all((tmp_path / "plots" / name).stat().st_size > 1000 for name in made)


# ------------------------------------------------------------------------------ a tiny sweep, for real


@pytest.mark.slow
def test_a_tiny_sweep_runs_prunes_fails_and_tracks_every_trial(tmp_path: Path) -> None:
    """Four trials of two epochs on the tiny config, chrF selecting: the baseline completes, a learning rate too
    small to learn is pruned after epoch 1 (successive halving against the baseline), a trial whose pairs are all
    too long fails in the train stage, and the sweep goes on to the fourth: the baseline's values again, which DVC's
    run-cache restores instead of training (the same curve, so it ties at epoch 1 and is kept)."""
    from mlflow.tracking import MlflowClient

    from s2s import sweep_runs

    ws = make_workspace(tmp_path / "ws", deep_merge(TINY_PARAMS, {"train": {"select_metric": "chrf"}}))
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump({
        "trials": 1, "fixed": {"train.epochs": 2},
        "space": {"train.lr": {"low": 1e-6, "high": 0.05, "log": True}, "train.max_tokens": {"choices": [2, 128]}},
        "pruner": {"kind": "successive_halving", "min_epochs": 1, "reduction_factor": 2},
    }))  # fmt: skip
    study = sweep_runs.open_sweep(ws, space, None, None, None)  # created with its MLflow run, the baseline queued
    for values in ({"train.lr": 1e-6, "train.max_tokens": 128}, {"train.lr": 0.02, "train.max_tokens": 2},
                   {"train.lr": 0.02, "train.max_tokens": 128}):  # fmt: skip
        study.enqueue_trial(values)
    out = subprocess.run([str(BIN / "s2s"), "sweep", str(space), "--workspace", str(ws)], cwd=ws, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{ws / 'sweeps.db'}").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert sorted(trials[1].intermediate_values) == [1]  # stopped after its first epoch
    assert sorted(trials[0].intermediate_values) == [1, 2] and trials[0].value > trials[1].intermediate_values[1]
    assert "no training pairs left" in trials[2].user_attrs[sweep.ERROR_ATTR]
    assert trials[3].value == trials[0].value and trials[3].intermediate_values == trials[0].intermediate_values
    # Trials after the first restore ingest and tokenizer from DVC's run-cache (the checkout's cache, shared).
    assert out.stdout.count("Stage 'ingest' is cached - skipping run") + out.stderr.count("is cached - skipping run") >= 3

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("s2s").experiment_id], "tags.`s2s.sweep` = 'tiny'")
    parent = next(r for r in runs if r.data.tags["s2s.sweep.role"] == "sweep")
    children = sorted(
        (r for r in runs if r.data.tags["s2s.sweep.role"] == "trial"), key=lambda r: int(r.data.params["sweep.trial"])
    )
    assert [r.data.tags["mlflow.parentRunId"] for r in children] == [parent.info.run_id] * 4
    assert [r.info.status for r in children] == ["FINISHED", "KILLED", "FAILED", "FINISHED"]
    assert [float(r.data.params["train.lr"]) for r in children] == [0.02, 1e-6, 0.02, 0.02]
    assert [len(client.get_metric_history(r.info.run_id, "epoch/valid_score")) for r in children] == [2, 1, 0, 2]
    assert children[0].data.metrics["sweep/value"] == trials[0].value
    assert "no training pairs left" in children[2].data.tags["s2s.sweep.error"]
    assert parent.info.status == "FINISHED" and parent.data.tags["s2s.sweep.best_trial"] == "0"  # the first of a tie
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/summary.json", "sweep/optimization_history.png", "sweep/space.yaml"} <= artifacts
    assert "| 2 | fail |" in out.stdout and "pruning saved about" in out.stdout

    best = subprocess.run([str(BIN / "s2s"), "sweep", str(space), "--workspace", str(ws), "--best"], cwd=ws,
                          capture_output=True, text=True)  # fmt: skip
    assert best.returncode == 0, best.stderr
    assert "best trial 0 of tiny" in best.stdout
    preset = presets.find(str(ws / "presets" / "tiny-best.yaml"))  # as `s2s run --preset FILE` finds it
    assert preset.values["train"]["lr"] == 0.02 and preset.values["train"]["select_metric"] == "chrf"
    assert presets.apply(ws / "params.yaml", [preset]) == []  # the winner is the workspace's own recipe here
