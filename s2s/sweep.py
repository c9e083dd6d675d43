"""Hyperparameter sweeps: a search space over params, its Optuna study, each trial's params and the results.

A search-space file (`sweeps/NAME.yaml`) names params by their dotted keys
(`train.lr`) with a range (`{low, high, log, step}`: floats, or ints when the
bounds are ints) or `{choices: [...]}`; `fixed` sets keys for every trial, on
top of the workspace's params.yaml. The study lives in Optuna's RDB storage
(SQLite by default, PostgreSQL on the team stack), so any number of workers
can share it: the trials are queued when the study is created, and a worker
takes a queued one atomically, so no trial runs twice. TPE samples a trial's
values when it starts (with a constant liar, so concurrent trials spread out);
a multi-fidelity pruner (Hyperband by default) judges each epoch's validation
score, the same `train.select_metric` that selects the checkpoint.

Knows nothing of Prefect, MLflow or DVC: `flows/sweep.py` runs each trial's
stages, prunes it, and tracks it.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import Field, ValidationError, model_validator

from s2s import dotted
from s2s.config import ConfigError, Params, _Section, format_validation_error, parse_params, read_yaml
from s2s.errors import S2SError
from s2s.metrics import METRICS, MetricName

log = logging.getLogger(__name__)
# Multivariate TPE, its constant liar and the matplotlib plots are marked experimental; the pinned Optuna is tested.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SECTIONS = ("tokenizer", "model", "train", "evaluate")  # what a trial may vary: the recipe, as in a preset
SPEC_ATTR = "s2s.spec"  # study user attributes: the search space, its metric, and "ready" once queued
METRIC_ATTR = "s2s.metric"
READY_ATTR = "s2s.ready"
ERROR_ATTR = "s2s.error"
BASELINE_ATTR = "s2s.baseline"
RECIPE_ATTR = "s2s.recipe"  # the base params' recipe sections, as the study was created with them
READY_WAIT_SECONDS = 120  # how long a worker waits for the process that creates the study to queue its trials

Scalar = bool | int | float | str | None


class SweepError(S2SError, ValueError):
    pass


# ------------------------------------------------------------------------------ the search-space file


class FloatRange(_Section):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FloatRange:
        _check_bounds(self.low, self.high, self.log, self.step)
        return self

    def values(self) -> list[Scalar]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_float(key, self.low, self.high, log=self.log, step=self.step)


class IntRange(_Section):
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntRange:
        _check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self

    def values(self) -> list[Scalar]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_int(key, self.low, self.high, log=self.log, step=self.step)


class Choices(_Section):
    choices: list[Scalar] = Field(min_length=1)

    def values(self) -> list[Scalar]:
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_categorical(key, self.choices)


def _check_bounds(low: float, high: float, log_scale: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"low must be below high (got low={low}, high={high}); a fixed value belongs in `fixed`")
    if log_scale and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0 (got {low})")
    if log_scale and step is not None:
        raise ValueError("log and step do not go together (Optuna samples a log range continuously)")


# Ints when both bounds are ints (pydantic's smart union prefers the exact type), floats otherwise.
Dimension = Choices | IntRange | FloatRange


class SamplerConfig(_Section):
    seed: int = 1  # TPE's seed: the same study, run again in one worker, samples the same trials
    startup_trials: int = Field(default=8, ge=0)  # random trials before TPE models the results (the baseline counts)


class PrunerConfig(_Section):
    kind: Literal["hyperband", "successive_halving", "median", "none"] = "hyperband"
    min_epochs: int = Field(default=1, ge=1)  # no trial is stopped before this many epochs
    max_epochs: int | None = Field(default=None, ge=1)  # hyperband's largest budget; null: the epochs of the first finished trial
    reduction_factor: int = Field(default=3, ge=2)  # each rung keeps about 1/reduction_factor of the trials


class SweepSpec(_Section):
    trials: int = Field(default=20, ge=1)  # trials in the study (the baseline included); `s2s sweep --trials` adds more
    baseline: bool = True  # trial 0 runs the workspace's own values of the swept keys: the result to beat
    fixed: dict[str, Any] = Field(default_factory=dict)  # dotted params key -> value, for every trial (e.g. train.max_minutes)
    space: dict[str, Dimension] = Field(min_length=1)  # dotted params key -> range or choices
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()


def parse_spec(raw: Any, source: str) -> SweepSpec:
    if not isinstance(raw, dict):
        raise SweepError(f"{source}: a search-space file is a mapping (space, fixed, trials, sampler, pruner)")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SweepError(format_validation_error(err, SweepSpec, source)) from None


def load_spec(path: Path) -> SweepSpec:
    return parse_spec(read_yaml(path, "search-space file", SweepError), str(path))


# ------------------------------------------------------------------------------ params of a trial


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        base = dotted.with_value(base, key, value)
    return base


def check_spec(spec: SweepSpec, base: dict[str, Any], source: str) -> None:
    """Every key a recipe param, every bound and choice a valid value there: named now, before any trial runs."""
    defaults = parse_params({}).model_dump(mode="json")
    for key in [*spec.fixed, *spec.space]:
        if key.split(".")[0] not in SECTIONS:
            raise SweepError(f"{source}: {key}: only recipe params can be swept or fixed ({', '.join(SECTIONS)} sections)")
        try:
            leaf = dotted.get(defaults, key)
        except KeyError:
            raise SweepError(f"{source}: {key}: no such param (params.yaml lists every key)") from None
        if isinstance(leaf, dict):
            raise SweepError(f"{source}: {key} is a section; name one of its keys ({', '.join(leaf)})")
    fixed = with_values(base, spec.fixed)
    _validate(fixed, f"{source}: fixed")
    for key, dim in spec.space.items():
        for value in dim.values():
            _validate(with_values(fixed, {key: value}), f"{source}: space.{key} = {value!r}")


def _validate(raw: dict[str, Any], source: str) -> Params:
    try:
        return parse_params(raw, source)
    except ConfigError as err:
        raise SweepError(str(err)) from None


def trial_params(base: dict[str, Any], spec: SweepSpec, values: dict[str, Any]) -> Params:
    """The params a trial runs with: the base, then `fixed`, then the trial's own values."""
    return _validate(with_values(with_values(base, spec.fixed), values), "trial params")


def baseline_values(base: dict[str, Any], spec: SweepSpec) -> dict[str, Any] | None:
    """The base params' values of the swept keys, if every one lies inside its dimension (else no baseline trial)."""
    values = {key: dotted.get(parse_params(with_values(base, spec.fixed)).model_dump(mode="json"), key) for key in spec.space}
    outside = [key for key, value in values.items() if not spec.space[key].contains(value)]
    if outside:
        log.warning("no baseline trial: the base value of %s lies outside the search space", ", ".join(outside))
        return None
    return values


# ------------------------------------------------------------------------------ the study


def direction(metric: MetricName) -> Literal["maximize", "minimize"]:
    return "maximize" if METRICS[metric].higher_is_better else "minimize"


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    # constant_liar: a running trial counts as a poor result, so concurrent workers do not sample the same region.
    return optuna.samplers.TPESampler(seed=spec.sampler.seed + seed_offset, n_startup_trials=spec.sampler.startup_trials,
                                      multivariate=True, constant_liar=True)  # fmt: skip


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    cfg = spec.pruner
    if cfg.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_epochs, max_resource=cfg.max_epochs or "auto",
                                              reduction_factor=cfg.reduction_factor)  # fmt: skip
    if cfg.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_epochs, reduction_factor=cfg.reduction_factor)
    if cfg.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=cfg.min_epochs - 1)
    return optuna.pruners.NopPruner()


def _spec_json(spec: SweepSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def open_study(
    name: str, storage: str, spec: SweepSpec, metric: MetricName, base: dict[str, Any],
    on_create: Callable[[optuna.Study], None] = lambda study: None,
) -> tuple[optuna.Study, bool]:  # fmt: skip
    """Create the study and queue its trials, or load it (waiting until its creator has queued them).

    Returns (study, created). `on_create` runs once, by the creating process, before the trials are queued
    (the flow starts the sweep's MLflow run there). Loading a study made from another search space is an error.
    """
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec),
                                    direction=direction(metric))  # fmt: skip
    except optuna.exceptions.DuplicatedStudyError:
        return load_study(name, storage, spec, metric), False
    study.set_user_attr(SPEC_ATTR, _spec_json(spec))
    study.set_user_attr(METRIC_ATTR, metric)
    study.set_user_attr(RECIPE_ATTR, {section: base[section] for section in SECTIONS})
    on_create(study)
    queued = queue(study, spec.trials, baseline_values(base, spec) if spec.baseline else None)
    study.set_user_attr(READY_ATTR, True)
    log.info("study %s created in %s: %d trials queued", name, safe_url(storage), queued)
    return study, True


def load_study(name: str, storage: str, spec: SweepSpec | None = None, metric: MetricName | None = None) -> optuna.Study:
    """An existing study, with the sampler and pruner its search space asks for; `spec`/`metric` must match it."""
    try:
        summaries = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as err:  # SQLAlchemy's and the driver's errors for a database it cannot use
        raise SweepError(f"cannot open the sweep storage {safe_url(storage)}: {err}") from None
    if name not in summaries:
        known = ", ".join(sorted(summaries)) or "none"
        raise SweepError(f"no study {name!r} in {safe_url(storage)} (studies there: {known})")
    study = optuna.load_study(study_name=name, storage=storage)
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() > deadline:
            raise SweepError(f"study {name!r} was created but its trials were never queued (its creator stopped?)")
        time.sleep(1)
    stored = stored_spec(study)
    if spec is not None and _spec_json(spec) != _spec_json(stored):
        raise SweepError(f"study {name!r} was created from another search space: give a new --study name, or the file it ran")
    if metric is not None and metric != study.user_attrs[METRIC_ATTR]:
        raise SweepError(f"study {name!r} selects on {study.user_attrs[METRIC_ATTR]}, not train.select_metric={metric}")
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(stored), pruner=make_pruner(stored))


def stored_spec(study: optuna.Study) -> SweepSpec:
    return SweepSpec.model_validate(json.loads(study.user_attrs[SPEC_ATTR]))


def stored_recipe(study: optuna.Study) -> dict[str, Any]:
    """The recipe sections the study was created with (workers on other checkouts run these, with their own data)."""
    return dict(study.user_attrs[RECIPE_ATTR])


def queue(study: optuna.Study, trials: int, baseline: dict[str, Any] | None = None) -> int:
    """Queue trials until the study holds `trials` (any state); the baseline's values first. Returns how many."""
    missing = trials - len(study.get_trials(deepcopy=False))
    for k in range(max(missing, 0)):
        study.enqueue_trial(baseline if k == 0 and baseline else {}, user_attrs={BASELINE_ATTR: bool(k == 0 and baseline)})
    return max(missing, 0)


def take_queued(study: optuna.Study) -> optuna.Trial | None:
    """Start one queued trial, or None when none is left.

    `Study.ask()` would create a new trial when the queue is empty, so two workers racing for the last one
    would run one trial too many; this takes a WAITING trial the way ask() does (the storage's state change is
    atomic: a trial another worker took first is skipped), and never creates one. The sampler is seeded with the
    study's seed plus the trial's number: each trial runs in a fresh process (a flow run), where one seed alone
    would draw the same "random" values for every trial.
    """
    storage = study._storage  # Optuna has no public "pop the queue only" call; these are the calls ask() makes
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                study.sampler = make_sampler(stored_spec(study), seed_offset=frozen.number)
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's value of every swept key (a queued trial's fixed values, or the sampler's)."""
    return {key: dim.suggest(trial, key) for key, dim in spec.space.items()}


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> None:
    """Queue the same values again (a trial interrupted by a stop, not by its own fault)."""
    study.enqueue_trial(dict(trial.params), user_attrs={BASELINE_ATTR: False, "s2s.retry_of": trial.number})


def safe_url(url: str) -> str:
    """A storage URL fit to print or log: any password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL
        return url


# ------------------------------------------------------------------------------ results


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs reported, minutes, then the swept values."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        start, end = t.datetime_start, t.datetime_complete
        minutes = (end - start).total_seconds() / 60 if start and end else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        value = t.value if t.state == TrialState.COMPLETE else last  # a pruned trial: its last validation
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": None if value is None else round(value, 2),
            "epochs": max(t.intermediate_values) if t.intermediate_values else 0,
            "minutes": None if minutes is None else round(minutes, 1),
            **{key: _short(t.params.get(key)) for key in stored_spec(study).space},
        }
        if t.user_attrs.get(BASELINE_ATTR):
            row["state"] += " (baseline)"
        if t.state == TrialState.FAIL:
            row["error"] = str(t.user_attrs.get(ERROR_ATTR, ""))[:200]
        rows.append(row)
    return rows


def _short(value: Any) -> Any:
    """Floats to 4 significant digits for the table (the study and the trial's MLflow run keep every digit)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def best_trial(study: optuna.Study) -> FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise SweepError(f"study {study.study_name!r} has no completed trial yet") from None


def cost(study: optuna.Study) -> dict[str, Any]:
    """Trials by state and their wall-clock hours; what pruning saved, against running each pruned trial to the end.

    A pruned trial would have cost about what a completed one did (their mean duration); the saving is that
    minus what it ran. Hours are wall clock, each trial on the worker's cores.
    """
    trials = study.get_trials(deepcopy=False)
    hours = {t.number: (t.datetime_complete - t.datetime_start).total_seconds() / 3600 for t in trials
             if t.datetime_complete and t.datetime_start}  # fmt: skip
    complete = [hours[t.number] for t in trials if t.state == TrialState.COMPLETE and t.number in hours]
    pruned = [hours[t.number] for t in trials if t.state == TrialState.PRUNED and t.number in hours]
    full = sum(complete) / len(complete) if complete else math.nan
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.state.name.lower()] = by_state.get(t.state.name.lower(), 0) + 1
    saved = len(pruned) * full - sum(pruned) if complete else math.nan
    return {
        "trials": by_state,
        "hours": round(sum(hours.values()), 2),
        "hours_saved_by_pruning": None if math.isnan(saved) else round(saved, 2) + 0.0,  # + 0.0: never "-0.0"
    }


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the swept keys over the completed trials ({} with fewer than two, or no variation).

    fANOVA (a random forest, seeded here), not Optuna 5's default PED-ANOVA: with the dozen trials a CPU sweep
    affords, PED-ANOVA's quantiles select the same trials and call every parameter equally important.
    """
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as err:  # e.g. a single distinct value
        log.info("no parameter importances: %s", err)
        return {}
    return {k: round(v, 3) for k, v in found.items()}


def write_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots: optimisation history, each trial's validation curve, parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    drawings: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: plots.plot_optimization_history(study),
        "intermediate_values": lambda: plots.plot_intermediate_values(study),
    }
    if importances(study):
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        drawings["param_importances"] = lambda: plots.plot_param_importances(study, evaluator=evaluator)
    for name, draw in drawings.items():
        try:
            axes = draw()
        except (ValueError, RuntimeError) as err:  # too few trials for this plot yet
            log.info("no %s plot: %s", name, err)
            continue
        if name != "param_importances":  # Optuna's generic labels, in the sweep's terms
            axes.set_xlabel("epoch" if name == "intermediate_values" else "trial")
            axes.set_ylabel(f"validation {study.user_attrs.get(METRIC_ATTR, 'score')}")
        figure = axes.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figure.savefig(out_dir / f"{name}.png", dpi=110)
        plt.close(figure)
        made.append(out_dir / f"{name}.png")
    return made


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def best_preset(study: optuna.Study, name: str) -> str:
    """The best trial's recipe as a preset file: every key of the recipe sections, the swept ones commented.

    Every key, not only the swept ones: `s2s run --preset` merges over a params.yaml whose other recipe keys
    may differ from those the sweep ran with.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    spec, best = stored_spec(study), best_trial(study)
    params = trial_params(stored_recipe(study), spec, dict(best.params)).model_dump(mode="json")
    metric = study.user_attrs.get(METRIC_ATTR, "bleu")
    document = CommentedMap()
    for section in SECTIONS:
        document[section] = _commented(params[section])
    for key, dim in spec.space.items():
        node, leaf = dotted.parent(document, key)
        node.yaml_add_eol_comment(f"swept: {_describe(dim)}", leaf)
    for key in spec.fixed:
        node, leaf = dotted.parent(document, key)
        node.yaml_add_eol_comment("fixed by the sweep", leaf)
    rt = YAML()
    rt.width = 4096
    buffer = io.StringIO()
    rt.dump(document, buffer)
    header = (
        f"# {name}: best trial {best.number} of sweep {study.study_name!r} (valid {metric} {best.value:.2f})\n"
        f"# Written by `s2s sweep --best`: the recipe sections ({', '.join(SECTIONS)}) as that trial ran them.\n"
        f"# `s2s run --preset PATH` writes them into params.yaml; your ingest, registry and promote sections stay.\n\n"
    )
    return header + buffer.getvalue()


YAML11_BOOLEANS = {"y", "n", "yes", "no", "on", "off", "true", "false"}


def _commented(tree: Any) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(tree, dict):
        out = CommentedMap()
        for key, value in tree.items():
            out[key] = _commented(value)
        return out
    if isinstance(tree, list):
        seq = CommentedSeq(tree)
        seq.fa.set_flow_style()
        return seq
    if isinstance(tree, str) and tree.lower() in YAML11_BOOLEANS:  # `amp: off` would read back as False
        from ruamel.yaml.scalarstring import DoubleQuotedScalarString

        return DoubleQuotedScalarString(tree)
    return tree


def _describe(dim: Dimension) -> str:
    if isinstance(dim, Choices):
        return f"choices {dim.choices}"
    return f"{dim.low}..{dim.high}{' log' if dim.log else ''}"
