"""MLflow: the one module of `s2s` that talks to the tracking server and registry.

`register` is idempotent: every version carries a lineage key (a hash of the
tokenizer, the model and the decoding settings, as DVC recorded them), and a
key that is already registered is returned instead of creating a new version,
so a retry after a crash, or a run where nothing changed, registers nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import requests
import sqlalchemy.exc
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from s2s import dotted, layout
from s2s.config import (
    DEFAULT_TRACKING_URI,
    QUANTIZATIONS,
    DecodingConfig,
    EvaluateConfig,
    IngestConfig,
    PromoteConfig,
    RegistryConfig,
)  # fmt: skip
from s2s.dvc import git, lock_holders
from s2s.errors import S2SError
from s2s.eval_records import EvalReport
from s2s.metrics import RougeMulti
from s2s.promotion import SKIPPED, Decision, Floor, GateOutcome, decide, refuse, task_conflict
from s2s.scoring import References, per_item
from s2s.serving import DECODING_OPTIONS, RequestBatcher, RequestError, ServeLimits, decoding_with
from s2s.task import Task
from s2s.train_records import TrainSummary, read_curve

log = logging.getLogger(__name__)
# What a store that cannot be used raises: MLflow's own errors, requests' for a server, SQLAlchemy's for a database.
STORE_ERRORS = (MlflowException, requests.exceptions.ConnectionError, sqlalchemy.exc.OperationalError, OSError)

LINEAGE_TAG = "s2s.lineage"
PACKAGE_DIR = Path(__file__).resolve().parent
# Artifact folders of a registered version's run.
LINEAGE_DIR, REPORTS_DIR = "lineage", "reports"
# Files that make a version reproducible: kept with its run, and what `s2s restore` puts back (not dvc.yaml:
# it goes with the code, at the version's git commit). Metrics are small, cache-less outs that DVC keeps in git.
RESTORED_FILES = (layout.LOCK_FILE, layout.PARAMS_FILE, layout.INGEST_STATS, layout.TRAIN_SUMMARY, layout.TRAIN_CURVE,
                  layout.EVAL_METRICS)  # fmt: skip
LINEAGE_FILES = (*RESTORED_FILES, layout.DVC_FILE)
# MLflow's models-from-code: this file is stored with each version and run when it loads, so no pickled object is
# kept; the s2s package travels with the version (code_paths).
MODEL_CODE = '''"""The s2s model as MLflow loads it (models-from-code)."""

import mlflow

from s2s.registry import S2SPyfunc

mlflow.models.set_model(S2SPyfunc())
'''
INPUT_EXAMPLE = ["We saw a big dog yesterday."]
# What a version's engine tag says: PyTorch (what the pipeline registers) or CTranslate2 with its quantization.
ENGINE_TAG, EXPORTED_FROM_TAG, PYTORCH = "s2s.engine", "s2s.exported_from", "pytorch"


def input_example(decoding: DecodingConfig) -> tuple[list[str], dict[str, Any]]:
    """The logged example: sentences, and the decoding options with this version's values.

    MLflow takes the signature's inputs and outputs from `predict`'s type hints and its params schema (names,
    types, defaults) from this example's params.
    """
    values = {**decoding.model_dump(), "n_best": 1}
    return INPUT_EXAMPLE, {name: kind(values[name]) for name, kind in DECODING_OPTIONS.items()}


class S2SPyfunc(mlflow.pyfunc.PythonModel):
    """A registered s2s model: source texts in, outputs (translations, summaries...) out, on the engine the version holds."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here: `code_paths` puts s2s on the path first.
        from s2s.translate import Translator

        tokenizer = Path(context.artifacts["tokenizer"])
        if "ctranslate2" in context.artifacts:
            from s2s.ct2 import CT2Translator

            self.translator: Any = CT2Translator.load(Path(context.artifacts["ctranslate2"]), tokenizer)
        else:
            self.translator = Translator.load(Path(context.artifacts["model"]), tokenizer)
        registered = EvaluateConfig.model_validate(json.loads(Path(context.artifacts["decoding"]).read_text()))
        self.decoding = registered.decoding()  # the artifact is the evaluate section; decoding needs its decoding keys
        self.limits = ServeLimits.from_env()
        self.batcher = RequestBatcher(self._decode)

    def _decode(self, sources: list[str], cfg: DecodingConfig, n_best: int) -> list[Any]:
        if n_best == 1:
            return self.translator.translate(sources, cfg)  # type: ignore[no-any-return]  # Any: the engine is chosen at load
        return self.translator.translate_nbest(sources, n_best, cfg)  # type: ignore[no-any-return]  # as above

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: list[str], params: dict[str, Any] | None = None
    ) -> list[str]:
        """One translation per sentence; with n_best > 1, a list of n translations (best first) per sentence.

        MLflow reads the type hints: a one-column DataFrame or JSON list arrives here as list[str]. `params` holds the
        request's decoding options (DECODING_OPTIONS), defaults filled in by MLflow from the signature. A refused
        request raises MLflow's INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400.
        """
        sources = [str(s) for s in model_input]
        try:
            cfg, n_best = decoding_with(self.decoding, params)
            self.limits.check(sources, cfg.beam_size, n_best)
        except RequestError as err:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(err)) from None
        return self.batcher(sources, cfg, n_best) if sources else []

    def attention(self, sources: list[str]) -> list[dict[str, Any]]:
        """Translations with their source-target attention, for `load_model(uri).unwrap_python_model()`.

        Each item has `translation`, `source_tokens`, `target_tokens` and
        `weights` (one row per target token plus </s>, one column per source
        token); `weights` is None for a model without attention. PyTorch versions only.
        """
        if not hasattr(self.translator, "translate_with_attention"):
            raise RequestError(f"attention maps come from the PyTorch engine; this version runs {self.translator.engine}")
        return [
            {"translation": t.text, "source_tokens": t.source_tokens, "target_tokens": t.tokens, "weights": t.attention}
            for t in self.translator.translate_with_attention(sources, self.decoding)
        ]


@dataclass(frozen=True)
class RunInputs:
    """What one pipeline run produced: files at the layout's paths in a workspace, and the params they were made with."""

    workspace: Path
    registry: RegistryConfig
    trained_with: dict[str, Any]  # the params each stage ran with, as dvc.lock recorded them (nested like params.yaml)

    def file(self, path: str) -> Path:
        return self.workspace / path

    @property
    def decoding(self) -> EvaluateConfig:
        """How the evaluate stage decoded; the registered model decodes the same way."""
        return EvaluateConfig.model_validate(self.trained_with.get("evaluate", {}))

    @property
    def task(self) -> Task:
        """The task the model was trained for, from the params the ingest stage ran with."""
        return Task.of(IngestConfig.model_validate(self.trained_with.get("ingest", {})))


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    created: bool  # False when this lineage was registered before
    tracking_uri: str
    experiment_id: str


def _requirements() -> list[str]:
    """What the served model needs, at the versions it was trained with (local labels like +cpu dropped)."""
    names = ("torch", "sentencepiece", "sacrebleu", "pydantic", "pyyaml", "mlflow")
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


def lineage_key(outs: dict[str, str], evaluate: EvaluateConfig) -> str:
    """Hash of what the registered model is made of: tokenizer and model outputs (dvc.lock md5s), decoding settings."""
    made_of = {path: outs.get(path, "") for path in (layout.TOKENIZER_DIR, layout.MODEL_DIR)}
    decoding = evaluate.model_dump(include={"beam_size", "max_len_a", "max_len_b", "length_penalty"})
    blob = json.dumps({"outs": made_of, "decoding": decoding}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def tracking_uri(cfg: RegistryConfig, workspace: Path) -> str:
    """params' URI, else MLflow's MLFLOW_TRACKING_URI, else the local default; relative sqlite paths are the workspace's."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str((workspace / uri[len(prefix) :]).resolve())
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def connect(cfg: RegistryConfig, workspace: Path) -> tuple[MlflowClient, str]:
    uri = tracking_uri(cfg, workspace)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        if is_server(uri):  # the server hands out its artifact location (proxied to its store): used as is
            mlflow.create_experiment(cfg.experiment)
        else:
            root = Path(cfg.artifact_root)
            root = root if root.is_absolute() else workspace / root
            mlflow.create_experiment(cfg.experiment, artifact_location=root.resolve().as_uri())
    mlflow.set_experiment(cfg.experiment)
    return MlflowClient(uri, uri), uri


def find_version(client: MlflowClient, name: str, key: str) -> ModelVersion | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    # Exports carry their source's lineage tag too; the lineage's own version is the PyTorch one.
    return next((v for v in versions if v.tags.get(LINEAGE_TAG) == key and v.tags.get(ENGINE_TAG, PYTORCH) == PYTORCH), None)


def log_run(inputs: RunInputs, tags: dict[str, str]) -> None:
    """Params (as the stages ran with them), per-epoch curves, final metrics, reports and lineage files into the active run."""
    flat = dotted.flatten(inputs.trained_with)
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    mlflow.set_tags(tags)
    for epoch in read_curve(inputs.file(layout.TRAIN_CURVE)):
        mlflow.log_metrics(epoch.mlflow_metrics(), step=epoch.epoch)
    summary = asdict(TrainSummary.read(inputs.file(layout.TRAIN_SUMMARY)))
    report = EvalReport.read(inputs.file(layout.EVAL_METRICS))
    numeric = {**{f"train/{k}": v for k, v in summary.items()}, **{f"test/{k}": v for k, v in report.to_dict().items()}}
    for decoding, scores in report.also.items():  # evaluate.also: test/greedy/bleu, ...
        numeric.update({f"test/{decoding}/{k}": v for k, v in asdict(scores).items()})
    mlflow.log_metrics({k: float(v) for k, v in numeric.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    mlflow.set_tags({f"test.{k}": v for k, v in report.signatures().items()})
    for path in (layout.EVAL_METRICS, layout.HYPOTHESES, layout.TRAIN_CURVE, layout.TRAIN_SUMMARY, layout.INGEST_STATS):
        mlflow.log_artifact(str(inputs.file(path)), artifact_path=REPORTS_DIR)
    if inputs.file(layout.ATTENTION_DIR).is_dir():
        mlflow.log_artifacts(str(inputs.file(layout.ATTENTION_DIR)), artifact_path="attention")
    for path in LINEAGE_FILES:  # at their workspace paths, so that `s2s restore` can put them back
        if inputs.file(path).is_file():
            mlflow.log_artifact(str(inputs.file(path)), artifact_path="/".join([LINEAGE_DIR, *Path(path).parent.parts]))


class RegistryUnavailable(S2SError, RuntimeError):
    """The MLflow store could not be used (down, unreachable, locked); the trained model is safe in DVC's cache."""


def registration_tags(outs: dict[str, str], commit: str, dirty: bool, flow_run_id: str) -> tuple[dict[str, str], str]:
    """A version's tags (git commit, Prefect flow run, the lineage outputs' dvc.lock hashes) and its description."""
    stage_hashes = {f"dvc.{stage}.{Path(path).name}": outs.get(path, "") for stage, path in layout.LINEAGE_OUTS.items()}
    tags = {"git.commit": commit, "git.dirty": str(dirty).lower(), "prefect.flow_run_id": flow_run_id, **stage_hashes}
    description = (
        f"Trained by the s2s pipeline from git commit {commit}{' (with local changes)' if dirty else ''}, "
        f"Prefect flow run {flow_run_id}; data {stage_hashes.get('dvc.ingest.prepared', '?')}, "
        f"tokenizer {stage_hashes.get('dvc.tokenizer.tokenizer', '?')} (dvc.lock md5). "
        "`s2s restore VERSION` puts its data, tokenizer and model files back from the DVC remote."
    )
    return tags, description


def register_workspace(workspace: Path, registry: RegistryConfig, lock: layout.LockView, flow_run_id: str) -> Registered:
    """Register the workspace's model with the params and hashes `lock` (dvc.lock) recorded: what really ran.

    A store that cannot be used is a RegistryUnavailable naming it (and, for a locked SQLite file, who holds it).
    """
    inputs = RunInputs(workspace=workspace, registry=registry, trained_with=lock.params)
    commit = git(workspace, "rev-parse", "HEAD") or "unknown"
    dirty = bool(git(workspace, "status", "--porcelain", "--untracked-files=no"))
    tags, description = registration_tags(lock.outs, commit, dirty, flow_run_id)
    uri = tracking_uri(registry, workspace)
    kept = "The trained model is kept in the DVC cache; run the pipeline again once {} and it registers without retraining."
    try:
        return register(inputs, lineage_key(lock.outs, inputs.decoding), tags, description)
    except Exception as err:  # MLflow raises its own, SQLAlchemy's, requests' and OS errors for a store it cannot use
        if "database is locked" in str(err) and uri.startswith("sqlite:///"):  # SQLite's own words: no type of its own
            database = uri[len("sqlite:///") :]
            raise RegistryUnavailable(
                f"the MLflow registry database {database} is locked by {lock_holders(Path(database))}. "
                + kept.format("it is free")
            ) from None
        if not isinstance(err, STORE_ERRORS):
            raise
        raise RegistryUnavailable(f"MLflow registry at {uri} failed: {err}. " + kept.format("MLflow is back")) from err


def register(inputs: RunInputs, key: str, tags: dict[str, str], description: str) -> Registered:
    """Log one run and register its model, unless this lineage key is registered already."""
    cfg, name = inputs.registry, inputs.registry.name
    client, uri = connect(cfg, inputs.workspace)
    existing = find_version(client, name, key)
    if existing is not None:
        log.info("model %s version %s already has lineage %s: nothing to register", name, existing.version, key)
        experiment = client.get_run(existing.run_id).info.experiment_id if existing.run_id else ""
        return Registered(name, str(existing.version), existing.run_id or "", False, uri, experiment)

    staging = inputs.workspace / ".cache" / "register"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    version_tags = {**tags, **inputs.task.tags(), LINEAGE_TAG: key, ENGINE_TAG: PYTORCH}
    with mlflow.start_run(run_name=f"s2s-{key[:8]}") as run:
        log_run(inputs, version_tags)
        artifacts = {"model": inputs.file(layout.MODEL_DIR) / layout.MODEL_FILE, "tokenizer": inputs.file(layout.TOKENIZER_DIR)}
        info = _log_model(artifacts, inputs.decoding, staging)
        version = _create_version(client, name, info, run.info.run_id, version_tags, description)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("registered %s version %s (run %s)", name, version.version, run.info.run_id)
    return Registered(name, str(version.version), run.info.run_id, True, uri, run.info.experiment_id)


def _log_model(
    artifacts: dict[str, Path], decoding: EvaluateConfig, staging: Path, requirements: tuple[str, ...] = ()
) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc (models-from-code, s2s's code with it) into the active run; `staging` holds the files written."""
    (staging / "decoding.json").write_text(json.dumps(decoding.model_dump()))
    (staging / "s2s_model.py").write_text(MODEL_CODE)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(staging / "s2s_model.py"),
        artifacts={**{k: str(v) for k, v in artifacts.items()}, "decoding": str(staging / "decoding.json")},
        code_paths=[str(PACKAGE_DIR)],
        input_example=input_example(decoding),  # MLflow checks at log time that the stored model answers it
        # Given, not inferred: inference loads the model in a subprocess, which costs seconds.
        pip_requirements=[*_requirements(), *requirements],
    )


def _create_version(
    client: MlflowClient, name: str, info: mlflow.models.model.ModelInfo, run_id: str, tags: dict[str, str], description: str
) -> ModelVersion:
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="s2s sequence-to-sequence model (source texts in, outputs out)")
    return client.create_model_version(
        name, source=info.model_uri, run_id=run_id, tags=tags, description=description, model_id=info.model_id
    )


# --------------------------------------------------------------------------------- export


def engine_name(quantization: str) -> str:
    return f"ctranslate2-{quantization}"


def find_export(client: MlflowClient, name: str, source: str, engine: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}'")
    return next((v for v in versions if v.tags.get(EXPORTED_FROM_TAG) == source and v.tags.get(ENGINE_TAG) == engine), None)


def export_version(client: MlflowClient, name: str, ref: str, quantization: str, staging: Path) -> Registered:
    """Register version `ref` (number or alias) converted to CTranslate2 as a new version, or return the one made before.

    The new version keeps the source's tags (lineage, git commit, DVC hashes) but not its gate verdict or cached
    scores, which belong to the source's engine; its `s2s.engine` and `s2s.exported_from` tags say what it is.
    """
    from s2s.ct2 import convert
    from s2s.errors import ExportError

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    source = resolve_version(client, name, ref)
    engine = engine_name(quantization)
    uri = mlflow.get_tracking_uri()
    if source.tags.get(ENGINE_TAG, PYTORCH) != PYTORCH:
        raise ExportError(f"{name} v{source.version} is itself an export ({source.tags[ENGINE_TAG]}); export its source, "
                          f"v{source.tags.get(EXPORTED_FROM_TAG, '?')}")  # fmt: skip
    existing = find_export(client, name, str(source.version), engine)
    if existing is not None:
        log.info("%s v%s was exported to %s before: v%s", name, source.version, engine, existing.version)
        _alias_champions_export(client, name, str(source.version), quantization, str(existing.version))
        experiment = client.get_run(existing.run_id).info.experiment_id if existing.run_id else ""
        return Registered(name, str(existing.version), existing.run_id or "", False, uri, experiment)

    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{source.version}", dst_path=str(staging / "source")))
        stored = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"].get("artifacts", {})
        files = {key: local / value["path"] for key, value in stored.items()}
        if "model" not in files:
            raise ExportError(f"{name} v{source.version} holds no s2s PyTorch checkpoint (artifacts: {', '.join(files)})")
        converted = convert(files["model"], files["tokenizer"], staging / "ctranslate2", quantization)  # type: ignore[arg-type]  # checked against QUANTIZATIONS above
        decoding = EvaluateConfig.model_validate_json(files["decoding"].read_text())
        inherited = {k: v for k, v in source.tags.items() if not k.startswith(("s2s.gate.", SCORE_TAG_PREFIX, "s2s.previous"))}
        tags = {**inherited, ENGINE_TAG: engine, EXPORTED_FROM_TAG: str(source.version)}
        experiment = client.get_run(source.run_id).info.experiment_id if source.run_id else None
        with mlflow.start_run(run_name=f"s2s-export-v{source.version}-{quantization}", experiment_id=experiment) as run:
            mlflow.set_tags(tags)
            mlflow.log_params({"source_version": source.version, "quantization": quantization})
            import ctranslate2

            artifacts = {"ctranslate2": converted, "tokenizer": files["tokenizer"]}
            info = _log_model(artifacts, decoding, staging, (f"ctranslate2=={ctranslate2.__version__}",))
            description = (f"v{source.version} converted to CTranslate2 ({quantization}) by `s2s export`; decodes as "
                           f"v{source.version} was registered to. {source.description or ''}").strip()  # fmt: skip
            version = _create_version(client, name, info, run.info.run_id, tags, description)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s v%s to %s: v%s", name, source.version, engine, version.version)
    _alias_champions_export(client, name, str(source.version), quantization, str(version.version))
    return Registered(name, str(version.version), run.info.run_id, True, uri, run.info.experiment_id)


# ----------------------------------------------------------------------------- promotion

CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_TAG, REASON_TAG, PREVIOUS_TAG = "s2s.gate.decision", "s2s.gate.reason", "s2s.previous_champion"
SCORE_TAG_PREFIX = "s2s.test_score."


def get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def score_model(
    uri: str,
    sources: list[str],
    references: References,
    metric: str,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 256,
    multi: RougeMulti = "best",
    stemmer: bool = False,
) -> float:
    """Load a registered model through MLflow (as it will be served) and score it as the evaluate stage does.

    Decodes `chunk` sentences at a time and reports (done, total) to `progress` after each chunk.
    """
    from s2s.scoring import score

    model = mlflow.pyfunc.load_model(uri)
    hypotheses: list[str] = []
    for start in range(0, len(sources), chunk):
        hypotheses += [str(h) for h in model.predict(sources[start : start + chunk])]
        if progress is not None:
            progress(len(hypotheses), len(sources))
    return float(score(hypotheses, references, (metric,), multi, stemmer)[metric])


def score_tag(sources: list[str], references: References, metric: str, multi: RougeMulti = "best", stemmer: bool = False) -> str:
    """The version tag that caches a model's `metric` on exactly this test set, references and scoring convention (a
    version's decoding never changes); one reference per item and the defaults hash as they did before either existed."""
    items = per_item(references)
    several = any(len(refs) > 1 for refs in items)
    key: list[object] = [sources, items if several else [refs[0] for refs in items]]
    key += [multi] if several else []
    key += ["stemmer"] if stemmer else []
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()[:16]
    return f"{SCORE_TAG_PREFIX}{metric}.{digest}"


def cached_score(client: MlflowClient, name: str, version: str, tag: str, compute: Callable[[], float]) -> float:
    """The score cached in the version's `tag`, or `compute()` it once and cache it there."""
    cached = client.get_model_version(name, version).tags.get(tag)
    if cached is not None:
        return float(cached)
    value = compute()
    client.set_model_version_tag(name, version, tag, repr(value))
    return value


def _set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def export_alias(quantization: str) -> str:
    """The alias of the champion's CTranslate2 export (`champion-int8`); it follows `champion` when that moves."""
    return f"{CHAMPION}-{quantization}"


def _follow_exports(client: MlflowClient, name: str, champion: str) -> None:
    """Point each export alias at the new champion's export of that kind, or drop it: never serve an old champion."""
    for alias in list(client.get_registered_model(name).aliases):
        if not alias.startswith(f"{CHAMPION}-"):
            continue
        export = find_export(client, name, champion, engine_name(alias[len(CHAMPION) + 1 :]))
        if export is not None:
            client.set_registered_model_alias(name, alias, str(export.version))
        else:
            client.delete_registered_model_alias(name, alias)
            log.info("alias %s dropped: v%s has no such export (`s2s export`)", alias, champion)


def _alias_champions_export(client: MlflowClient, name: str, source: str, quantization: str, export: str) -> None:
    """An export of the champion gets the alias champion-<quantization>, which then follows `champion`."""
    champion = get_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == source:
        client.set_registered_model_alias(name, export_alias(quantization), export)


def _crown(client: MlflowClient, name: str, version: str, previous: ModelVersion | None) -> None:
    """Make `version` the champion, remembering the one it replaces for rollback."""
    if previous is not None and str(previous.version) != str(version):
        client.set_model_version_tag(name, version, PREVIOUS_TAG, str(previous.version))
    client.set_registered_model_alias(name, CHAMPION, version)
    _follow_exports(client, name, str(version))


def run_gate(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    margin: float,
    scorer: Callable[[str], float],
    floor: Floor | None = None,
    task: Task | None = None,
) -> Decision:
    """Challenger vs champion on the same test set; move `champion` only on a clear win above the floor.

    With the challenger's `task`, a champion of another task (or of none recorded) is not compared at all: the
    decision is a refusal saying what differs. Tags go on the challenger first and the alias moves last, so a
    gate that fails half-way leaves the champion as it was.
    """
    client.set_registered_model_alias(name, CHALLENGER, version)
    current = get_alias(client, name, CHAMPION)
    if current is not None and str(current.version) == str(version):
        return Decision(False, f"v{version} is already the champion", metric, float("nan"), None, str(version))
    conflict = None
    if task is not None and current is not None:
        conflict = task_conflict(name, task, Task.from_tags(current.tags), str(current.version))
    challenger_score: float | None = None
    champion_score: float | None = None
    if conflict is not None and current is not None:
        decision = refuse(metric, conflict, str(current.version))
    else:
        challenger_score = scorer(version)
        below_floor = floor is not None and not floor.passes(challenger_score)  # then no need to decode the champion
        champion_score = scorer(str(current.version)) if current is not None and not below_floor else None
        decision = decide(metric, challenger_score, champion_score, str(current.version) if current else None, margin, floor)
    _set_tags(
        client,
        name,
        version,
        {
            DECISION_TAG: decision.verdict,
            REASON_TAG: decision.reason,
            "s2s.gate.metric": metric,
            "s2s.gate.challenger_score": "" if challenger_score is None else f"{challenger_score:.2f}",
            "s2s.gate.champion_score": "" if champion_score is None else f"{champion_score:.2f}",
            "s2s.gate.champion_version": decision.champion_version or "",
            "s2s.gate.floor": "" if floor is None else f"{floor.value:.2f}",
        },
    )
    if decision.promote:
        _crown(client, name, version, current)
    log.log(logging.WARNING if decision.refused else logging.INFO, "gate: v%s %s: %s", version, decision.verdict, decision.reason)
    return decision


Logger = logging.Logger | logging.LoggerAdapter[Any]  # the flow passes Prefect's run logger, which is an adapter


def gate_registered(
    client: MlflowClient, registered: Registered, promote: PromoteConfig, inputs: RunInputs, logger: Logger = log
) -> GateOutcome:
    """The flow's promotion gate for the version just registered: run_gate on the workspace's test set, unless the
    gate is off or this version was decided before. The challenger's score is the evaluate stage's (the same model,
    decoding and test set); a champion's is decoded once per version and test set, then read from its tag."""
    if not promote.enabled:
        logger.info("promotion gate disabled (promote.enabled: false): champion unchanged")
        return GateOutcome(SKIPPED, "promote.enabled is false")
    tags = client.get_model_version(registered.name, registered.version).tags
    if not registered.created and DECISION_TAG in tags:
        logger.info("v%s was decided before (%s): gate skipped", registered.version, tags[DECISION_TAG])
        return GateOutcome(f"unchanged ({tags[DECISION_TAG]})", tags.get(REASON_TAG, ""))
    examples = layout.read_examples(inputs.file(layout.PREPARED_DIR), "test")
    scoring = inputs.decoding  # the evaluate stage's references and ROUGE convention: the challenger was scored so
    sources, references = [e.src for e in examples], [e.references(scoring.references) for e in examples]
    multi, stemmer = scoring.rouge_multi, scoring.rouge_stemmer
    metric, tag = promote.metric, score_tag(sources, references, promote.metric, multi, stemmer)
    evaluated = EvalReport.read(inputs.file(layout.EVAL_METRICS))

    def decode(version: str) -> float:
        def progress(done: int, total: int) -> None:
            logger.info("v%s: decoding the test set for the gate: %d/%d sentences (%d%%)", version, done, total,
                        100 * done // total)  # fmt: skip

        return score_model(f"models:/{registered.name}/{version}", sources, references, metric, progress,
                           multi=multi, stemmer=stemmer)  # fmt: skip

    def scorer(version: str) -> float:
        own = version == registered.version
        value = cached_score(client, registered.name, version, tag, lambda: evaluated.score(metric) if own else decode(version))
        logger.info("v%s: test %s %.2f", version, metric, value)
        return value

    floor = Floor(metric, copy_source=evaluated.copy_source(metric), bound=promote.bound)
    decision = run_gate(client, registered.name, registered.version, metric, promote.margin, scorer, floor, inputs.task)
    (logger.warning if decision.refused else logger.info)("gate: %s", decision.reason)
    return GateOutcome.of(decision)


def promote(client: MlflowClient, name: str, version: str, reason: str) -> ModelVersion | None:
    """Make a version champion by hand; returns the champion it replaced."""
    client.get_model_version(name, version)  # a clear MLflow error if it does not exist
    current = get_alias(client, name, CHAMPION)
    _set_tags(client, name, version, {DECISION_TAG: "promoted by hand", REASON_TAG: reason})
    _crown(client, name, version, current)
    return current


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Give `champion` back to the version it replaced; returns (from, to)."""
    current = get_alias(client, name, CHAMPION)
    if current is None:
        raise mlflow.exceptions.MlflowException(f"model {name!r} has no champion to roll back")
    previous = current.tags.get(PREVIOUS_TAG)
    if not previous:
        raise mlflow.exceptions.MlflowException(f"champion v{current.version} of {name!r} replaced no earlier champion")
    client.set_registered_model_alias(name, CHAMPION, previous)
    _follow_exports(client, name, previous)
    _set_tags(client, name, str(current.version), {DECISION_TAG: "rolled back", REASON_TAG: f"rollback to v{previous}"})
    _set_tags(client, name, previous, {DECISION_TAG: "restored by rollback", REASON_TAG: f"rollback from v{current.version}"})
    return str(current.version), previous


# ------------------------------------------------------------------------------- restore


def load_registered(model_uri: str, given_uri: str | None, workspace: Path) -> mlflow.pyfunc.PyFuncModel:
    """A registered model (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/...) from the store `given_uri` names (else
    $MLFLOW_TRACKING_URI, else the workspace's)."""
    uri = tracking_uri(RegistryConfig(tracking_uri=given_uri), workspace)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def unaccepted_options(model: mlflow.pyfunc.PyFuncModel, options: dict[str, Any]) -> list[str]:
    """The decoding options a loaded model's signature does not take (versions registered before they existed)."""
    schema = model.metadata.get_params_schema()
    accepted = {p.name for p in schema.params} if schema is not None else set()
    return sorted(set(options) - accepted)


def resolve_version(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    """A version by number (`3`) or alias (`champion`)."""
    return client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)


def download_lineage(client: MlflowClient, name: str, ref: str, workspace: Path) -> ModelVersion:
    """Write a version's dvc.lock, params.yaml and metrics into `workspace`, at their own paths.

    With that lock in place, `dvc pull` brings back exactly that version's
    data, tokenizer and model files from the DVC remote.
    """
    version = resolve_version(client, name, ref)
    staging = Path(tempfile.mkdtemp(prefix="s2s-restore-"))
    try:
        lineage = Path(client.download_artifacts(version.run_id, LINEAGE_DIR, str(staging)))
        missing = [path for path in RESTORED_FILES if not (lineage / path).is_file()]
        if missing:
            raise mlflow.exceptions.MlflowException(
                f"{name} v{version.version} (run {version.run_id}) has no {', '.join(missing)} in its lineage artifacts; "
                "it was registered before s2s kept them"
            )
        for path in RESTORED_FILES:
            (workspace / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lineage / path, workspace / path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("restored the lineage files of %s v%s into %s", name, version.version, workspace)
    return version
