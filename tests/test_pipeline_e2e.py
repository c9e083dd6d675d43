"""The whole pipeline through the real Prefect flow, DVC and MLflow, on a tiny config."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import TINY_PARAMS, TINY_TRANSFORMER, deep_merge, make_workspace, mlflow_uris, run

from s2s import checkpoint, layout
from s2s.metrics import METRIC_NAMES
from s2s.promotion import ExportOutcome
from s2s.train_records import TrainSummary
from s2s.workspace import GIT

pytestmark = pytest.mark.slow


def _versions(workspace: Path) -> list[dict[str, str]]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    return [
        {"version": str(v.version), "run_id": v.run_id, **v.tags}
        for v in sorted(client.search_model_versions("name = 's2s-builtin-en-de'"), key=lambda v: int(v.version))
    ]


def commit_run(ws: Path, message: str) -> None:
    """What a user does after a run: commit dvc.lock, the metrics and DVC's .gitignore entries."""
    run([*GIT, "add", "-A"], ws)
    run([*GIT, "commit", "-q", "-m", message], ws)


def dvc_files(ws: Path, lock: dict, path: str) -> dict[str, str]:
    """file -> md5 of one output, as dvc.lock (and the DVC cache's directory listing) say it should be."""
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == path)
    if not md5.endswith(".dir"):
        return {path: md5}
    listing = ws / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {f"{path}/{entry['relpath']}": entry["md5"] for entry in json.loads(listing.read_text())}


def md5_files(ws: Path, paths: list[str]) -> dict[str, str]:
    return {p: hashlib.md5((ws / p).read_bytes()).hexdigest() for p in paths}


def s2s_command() -> list[str]:
    return [str(Path(sys.executable).parent / "s2s"), "run"]  # this environment's `.venv/bin/s2s run`


def s2s_env(tmp_path: Path) -> dict[str, str]:
    """For `s2s run` in a subprocess: its own Prefect home (an ephemeral API of its own), no telemetry."""
    import os

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return env


def test_pipeline_runs_skips_and_retrains(tmp_path: Path, prefect_home: None) -> None:
    from flows.pipeline import pipeline

    ws = make_workspace(tmp_path / "ws", TINY_PARAMS)

    first = pipeline(workspace=str(ws))
    assert first.stages_ran == {"ingest": True, "tokenizer": True, "encode": True, "train": True, "evaluate": True}
    for path in (
        "data/prepared/train.src",
        "data/prepared/test.tgt",
        "artifacts/tokenizer/joint.model",
        "artifacts/model/model.pt",
        "metrics/train_curve.csv",
        "reports/hypotheses.tsv",
        "dvc.lock",
    ):
        assert (ws / path).is_file(), path
    metrics = json.loads((ws / "metrics/eval.json").read_text())
    assert metrics["sentences"] == 100
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    stats = json.loads((ws / "metrics/ingest.json").read_text())
    train = stats["train"]
    assert train["read"] == train["kept"] + train["dropped_total"] + sum(train["moved"].values())
    versions = _versions(ws)
    assert [v["version"] for v in versions] == ["1"]
    assert (
        versions[0]["git.commit"]
        == subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    )
    assert first.registered.created is True
    assert first.gate.decision == "promoted" and first.gate.reason == "first version: no champion yet"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(versions[0]["run_id"], "attention")}
    assert "attention/sentence_01.png" in logged
    history = client.get_metric_history(versions[0]["run_id"], "epoch/valid_bleu")
    assert [m.step for m in history] == [1, 2]
    # Every metric the evaluate stage computed, ROUGE included, is in the run, with the copy-the-source baseline.
    run_metrics = client.get_run(versions[0]["run_id"]).data.metrics
    for name in METRIC_NAMES:
        assert run_metrics[f"test/{name}"] == metrics[name] and f"copy_source_{name}" in metrics
    assert client.get_run(versions[0]["run_id"]).data.tags["test.rouge_signature"] == metrics["rouge_signature"]
    # What was logged is what trained: the run's params are the params the checkpoint was made with.
    logged = client.get_run(versions[0]["run_id"]).data.params
    payload = checkpoint.read(ws / layout.MODEL_DIR / layout.MODEL_FILE)
    for section, config in (("train", payload["train_config"]), ("model", payload["model_config"])):
        flat = {f"{section}.{k}": v for k, v in config.items() if not isinstance(v, dict)}
        flat |= {f"{section}.{k}.{kk}": vv for k, v in config.items() if isinstance(v, dict) for kk, vv in v.items()}
        assert {k: logged[k] for k in flat} == {k: str(v) for k, v in flat.items()}
    assert logged["train.epochs"] == "2" and "registry.tracking_uri" not in logged
    # Data and artifacts reached the default DVC remote, the folder beside the workspace (.dvc/config).
    remote = ws.parent / "s2s-dvc-remote"
    assert any(p.is_file() for p in remote.rglob("*"))
    commit_run(ws, "v1")
    v1_lock = yaml.safe_load((ws / layout.LOCK_FILE).read_text())

    # DVC alone, without Prefect, reproduces the same evaluation in a second workspace.
    alone = make_workspace(tmp_path / "alone", TINY_PARAMS)
    run([sys.executable, "-m", "dvc", "repro"], alone)
    again = json.loads((alone / "metrics/eval.json").read_text())
    assert {k: again[k] for k in METRIC_NAMES} == {k: metrics[k] for k in METRIC_NAMES}
    assert (alone / "reports/hypotheses.tsv").read_text() == (ws / "reports/hypotheses.tsv").read_text()

    # Nothing changed: every stage skipped, nothing registered.
    second = pipeline(workspace=str(ws))
    assert not any(second.stages_ran.values())
    assert second.registered == replace(first.registered, created=False)
    assert second.gate.decision == "unchanged (promoted)"
    assert len(_versions(ws)) == 1

    # One training param changed: only train and evaluate run, and a new version appears.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, {"train": {"lr": 0.004}}), sort_keys=False))
    third = pipeline(workspace=str(ws))
    assert third.stages_ran == {"ingest": False, "tokenizer": False, "encode": False, "train": True, "evaluate": True}
    versions = _versions(ws)
    assert [v["version"] for v in versions] == ["1", "2"]
    assert versions[0]["s2s.lineage"] != versions[1]["s2s.lineage"]
    # The gate compared v2 with champion v1 on the same test set and wrote why.
    # The verdict follows from the scores: below the floor (copying the source; promote.min_score 0) a challenger is
    # rejected without decoding the champion; above it, any gain over the champion wins (promote.margin 0).
    gate = third.gate
    assert gate.champion_version == "1" and gate.challenger == third.metrics.bleu
    if gate.challenger <= third.metrics.copy_source_bleu:
        assert (gate.decision, gate.champion) == ("rejected", None)
    else:
        assert gate.champion == first.metrics.bleu
        assert gate.decision == ("promoted" if gate.challenger > gate.champion else "rejected")
    assert versions[1]["s2s.gate.champion_version"] == "1"
    assert versions[1]["s2s.gate.reason"].startswith("bleu ")
    commit_run(ws, "v2")

    # A fresh clone beside it pulls from the committed default remote: DVC finds nothing to do.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    run([sys.executable, "-m", "dvc", "pull"], clone)
    from s2s.dvc import stale_stages

    assert stale_stages(clone, *layout.STAGE_NAMES) == set()
    assert "Running stage" not in run([sys.executable, "-m", "dvc", "repro"], clone).stdout
    # `s2s restore 1` there brings version 1's files back, byte for byte what its dvc.lock names.
    from flows.cli import main as cli

    v1_files = {p: h for out in v1_lock["stages"]["train"]["outs"] for p, h in dvc_files(ws, v1_lock, out["path"]).items()}
    v1_files |= dvc_files(ws, v1_lock, layout.PREPARED_DIR) | dvc_files(ws, v1_lock, layout.TOKENIZER_DIR)
    assert md5_files(clone, list(v1_files)) != v1_files  # the clone holds version 2's model
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    assert cli(["restore", "1", "--workspace", str(clone), "--tracking-uri", uri]) == 0
    assert md5_files(clone, list(v1_files)) == v1_files
    assert yaml.safe_load((clone / layout.LOCK_FILE).read_text()) == v1_lock
    assert stale_stages(clone, *layout.STAGE_NAMES) == set()

    # The registered model loads in a fresh process, from its URI alone, and translates.
    script = (
        "import json, sys, mlflow.pyfunc\n"
        f"mlflow.set_registry_uri('sqlite:///{ws / 'mlflow.db'}')\n"
        "model = mlflow.pyfunc.load_model('models:/s2s-builtin-en-de/2')\n"
        "print(json.dumps(list(model.predict(['We saw a big dog yesterday.', 'They sold the old book.']))))\n"
        "print(json.dumps(model.unwrap_python_model().attention(['We saw a big dog yesterday.'])))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    translations = json.loads(out.stdout.strip().splitlines()[-2])
    assert len(translations) == 2 and all(isinstance(t, str) and t for t in translations)
    [attention] = json.loads(out.stdout.strip().splitlines()[-1])
    assert attention["translation"] == translations[0]
    assert len(attention["weights"]) == len(attention["target_tokens"]) + 1  # a row per output token and </s>
    assert all(len(row) == len(attention["source_tokens"]) and abs(sum(row) - 1) < 1e-4 for row in attention["weights"])

    # `s2s translate` with the local checkpoint gives the registered model's translations (same greedy search).
    from flows.cli import main

    output = tmp_path / "out.txt"
    (tmp_path / "in.txt").write_text("We saw a big dog yesterday.\nThey sold the old book.\n")
    assert (
        main(
            [
                "translate",
                "--model",
                str(ws / "artifacts/model"),
                "--tokenizer",
                str(ws / "artifacts/tokenizer"),
                "--input",
                str(tmp_path / "in.txt"),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert output.read_text().splitlines() == translations
    # ...and so does the registered model through any models:/ URI, here the version by alias.
    champion = "1" if third.gate.decision == "rejected" else "2"
    registry = f"sqlite:///{ws / 'mlflow.db'}"
    assert main(["translate", "--model", f"models:/s2s-builtin-en-de/{champion}", "--tracking-uri", registry,
                 "--input", str(tmp_path / "in.txt"), "--output", str(output)]) == 0  # fmt: skip
    assert main(["translate", "--model", "models:/s2s-builtin-en-de@champion", "--tracking-uri", registry,
                 "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "alias.txt")]) == 0  # fmt: skip
    assert (tmp_path / "alias.txt").read_text() == output.read_text()


def test_failing_stage_fails_the_flow_with_its_error(tmp_path: Path, prefect_home: None) -> None:
    from flows.pipeline import pipeline

    params = deep_merge(TINY_PARAMS, {"tokenizer": {"vocab_size": 50000}})
    ws = make_workspace(tmp_path / "ws", params)
    state = pipeline(workspace=str(ws), return_state=True)
    assert state.is_failed()
    with pytest.raises(
        Exception,
        match=r"^tokenizer stage failed: tokenizer.vocab_size=50000 is too large for this data \(at most \d+ fits\)",
    ):
        state.result()
    assert not (ws / "mlflow.db").exists() or _versions(ws) == []


def test_second_run_in_the_same_workspace_is_refused(tmp_path: Path, prefect_home: None) -> None:
    from flows.pipeline import pipeline
    from s2s.workspace import workspace_lock

    ws = make_workspace(tmp_path / "ws", TINY_PARAMS)
    with workspace_lock(ws):  # a run in progress
        state = pipeline(workspace=str(ws), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"another s2s pipeline run is using .*ws \(pid \d+ on .* since .*\); wait for it"):
        state.result()
    assert not (ws / "data" / "prepared").exists()  # nothing ran


def test_unreachable_registry_fails_clearly_and_the_next_run_registers_without_training(
    tmp_path: Path, prefect_home: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = deep_merge(TINY_PARAMS, {"registry": {"tracking_uri": "http://127.0.0.1:9"}, "remote": {"push": False}})
    ws = make_workspace(tmp_path / "ws", down)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["registry"]["tracking_uri"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = pipeline(workspace=str(ws), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"MLflow registry at http://127.0.0.1:9 failed: .*kept in the DVC cache"):
        state.result()
    assert (ws / "artifacts/model/model.pt").is_file()

    params["registry"]["tracking_uri"] = "sqlite:///mlflow.db"  # MLflow is back
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = pipeline(workspace=str(ws))
    assert not any(result.stages_ran.values())
    assert result.registered.created is True and result.registered.version == "1"


def test_editing_one_line_of_own_raw_data_reruns_ingest_and_everything_after(tmp_path: Path, prefect_home: None) -> None:
    from flows.pipeline import pipeline
    from s2s.corpus import generate_pairs

    raw = {"src": f"{layout.RAW_DIR}/train.en", "tgt": f"{layout.RAW_DIR}/train.de"}
    own = {"corpus": "files", "files": {"train": raw}, "holdout": {"valid": 50, "test": 50}}
    ws = make_workspace(tmp_path / "ws", deep_merge(TINY_PARAMS, {"ingest": own, "train": {"epochs": 1}}))
    pairs = generate_pairs(700, 5)
    (ws / raw["src"]).write_text("".join(s + "\n" for s, _ in pairs))
    (ws / raw["tgt"]).write_text("".join(t + "\n" for _, t in pairs))

    first = pipeline(workspace=str(ws))
    assert all(first.stages_ran.values())
    # The flow versioned the raw files with DVC (pushed with the rest), and git ignores the data itself.
    assert (ws / f"{raw['tgt']}.dvc").is_file()
    assert run(["git", "check-ignore", raw["tgt"]], ws).stdout.strip() == raw["tgt"]
    assert not any(pipeline(workspace=str(ws)).stages_ran.values())

    lines = (ws / raw["tgt"]).read_text().splitlines()
    lines[10] = lines[10].replace(".", " heute.")
    (ws / raw["tgt"]).write_text("".join(line + "\n" for line in lines))
    third = pipeline(workspace=str(ws))
    assert third.stages_ran == {"ingest": True, "tokenizer": True, "encode": True, "train": True, "evaluate": True}
    assert third.registered.created is True and third.registered.version == "2"
    tracked = yaml.safe_load((ws / f"{raw['tgt']}.dvc").read_text())["outs"][0]["md5"]
    assert tracked == hashlib.md5((ws / raw["tgt"]).read_bytes()).hexdigest()  # the edit is what DVC versioned
    assert (tmp_path / "s2s-dvc-remote" / "files" / "md5" / tracked[:2] / tracked[2:]).is_file()  # ...and pushed

    # A failed ingest (a missing input file) leaves the last good data and metrics exactly as they were.
    kept = [*(str(p.relative_to(ws)) for p in sorted((ws / layout.PREPARED_DIR).rglob("*")) if p.is_file()), layout.INGEST_STATS]
    before = md5_files(ws, kept)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["ingest"]["files"]["train"]["src"] = f"{layout.RAW_DIR}/missing.en"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = subprocess.run(s2s_command(), cwd=ws, env=s2s_env(tmp_path), capture_output=True, text=True)
    assert failed.returncode == 1
    output = failed.stdout + failed.stderr
    assert (
        "s2s: run failed (exit code 1): ingest stage failed: data/raw/missing.en: input file not found\n"
        "ingest's last good outputs are back in place (data/prepared, metrics/ingest.json), as dvc.lock records them: "
        "nothing was lost\n"
    ) in failed.stderr, output[-2000:]
    assert output.count("missing.en") <= 2 and "Traceback" not in output  # said once by the stage, once at the end
    assert "git add" not in output and "exited with" not in output  # DVC's hints and restatements are not shown
    assert md5_files(ws, kept) == before


def test_junk_first_model_is_never_champion_and_a_better_one_is(tmp_path: Path, prefect_home: None) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import pipeline
    from s2s.registry import CHAMPION, get_alias, score_tag

    junk = {"train": {"max_minutes": 0.0001, "epochs": 1, "lr": 1e-6}}
    ws = make_workspace(tmp_path / "ws", deep_merge(TINY_PARAMS, junk))
    first = pipeline(workspace=str(ws))  # the budget runs out after one update, too small to move the weights: a junk model
    metrics = first.metrics
    assert first.gate.decision == "rejected"
    assert first.gate.reason == (
        f"bleu {metrics.bleu:.2f} is not better than the floor {metrics.copy_source_bleu:.2f} "
        f"(bleu of copying the source {metrics.copy_source_bleu:.2f}, promote.min_score 0.00)"
    )
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    assert get_alias(client, "s2s-builtin-en-de", CHAMPION) is None

    params = yaml.safe_load((ws / "params.yaml").read_text())
    trained = {"train": {"max_minutes": 0, "epochs": 3, "lr": TINY_PARAMS["train"]["lr"]}}
    (ws / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, trained)))
    second = pipeline(workspace=str(ws))
    assert second.gate.decision == "promoted", second.gate.reason
    assert str(get_alias(client, "s2s-builtin-en-de", CHAMPION).version) == "2"
    # The gate took the challenger's score from the evaluate stage (same model, decoding, test set) and cached it.
    pairs = layout.read_prepared(ws / layout.PREPARED_DIR, "test")
    tag = score_tag([s for s, _ in pairs], [t for _, t in pairs], "bleu")
    assert float(client.get_model_version("s2s-builtin-en-de", "2").tags[tag]) == second.metrics.bleu


def test_a_model_of_other_languages_is_refused_under_the_same_name_and_is_v1_of_its_own_under_the_default_name(
    tmp_path: Path, prefect_home: None
) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import pipeline
    from s2s.corpus import generate_pairs
    from s2s.registry import CHAMPION, get_alias

    ws = make_workspace(tmp_path / "ws", deep_merge(TINY_PARAMS, {"remote": {"push": False}}))
    first = pipeline(workspace=str(ws))  # the generated corpus, en->de: s2s-builtin-en-de v1, champion
    assert first.registered.name == "s2s-builtin-en-de" and first.gate.decision == "promoted"

    # Own data in the other direction, German->English, registered under the same name by hand.
    raw = {"src": f"{layout.RAW_DIR}/train.de", "tgt": f"{layout.RAW_DIR}/train.en"}
    pairs = generate_pairs(1500, 3)
    (ws / raw["src"]).write_text("".join(t + "\n" for _, t in pairs))
    (ws / raw["tgt"]).write_text("".join(s + "\n" for s, _ in pairs))
    own = {"src_lang": "de", "tgt_lang": "en", "corpus": "files", "files": {"train": raw}}
    params = yaml.safe_load((ws / "params.yaml").read_text())
    mine = deep_merge(params, {"ingest": own, "registry": {"model_name": "s2s-builtin-en-de"}})
    (ws / "params.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))
    second = pipeline(workspace=str(ws))
    assert (second.registered.name, second.registered.version, second.registered.created) == ("s2s-builtin-en-de", "2", True)
    assert second.gate.decision == "refused"
    assert second.gate.reason == (
        "s2s-builtin-en-de holds another task than this model: champion v1 is en->de, data builtin, this one de->en, data "
        "(own files, unnamed) (ingest.src_lang de vs en; ingest.tgt_lang en vs de; ingest.dataset (none) vs builtin); the "
        "gate compares models of one task only: name this data's model with registry.model_name, or leave it null for "
        "the name derived from the data (s2s-de-en)"
    )
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    assert str(get_alias(client, "s2s-builtin-en-de", CHAMPION).version) == "1"
    tags = client.get_model_version("s2s-builtin-en-de", "2").tags
    assert (tags["s2s.task.src_lang"], tags["s2s.task.tgt_lang"], tags["s2s.gate.decision"]) == ("de", "en", "refused")

    mine["registry"]["model_name"] = None  # the default: a name from the data
    (ws / "params.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))
    third = pipeline(workspace=str(ws))
    assert not any(third.stages_ran.values())  # nothing retrains: the same model, registered under its own name
    assert (third.registered.name, third.registered.version) == ("s2s-de-en", "1")
    assert third.gate.decision == "promoted" and str(get_alias(client, "s2s-de-en", CHAMPION).version) == "1"


def test_promote_export_registers_the_new_transformer_champion_for_ctranslate2(tmp_path: Path, prefect_home: None) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from flows.pipeline import pipeline
    from s2s.summary import sample_rows

    params = deep_merge(deep_merge(TINY_PARAMS, TINY_TRANSFORMER), {"promote": {"export": "int8"}, "remote": {"push": False}})
    ws = make_workspace(tmp_path / "ws", params)
    result = pipeline(workspace=str(ws))
    assert result.gate.decision == "promoted", result.gate.reason
    assert result.gate.export == ExportOutcome(exported="2", quantization="int8", alias="champion-int8")
    first, second = _versions(ws)
    assert (first["s2s.engine"], second["s2s.engine"], second["s2s.exported_from"]) == ("pytorch", "ctranslate2-int8", "1")
    assert second["s2s.lineage"] == first["s2s.lineage"] and second["git.commit"] == first["git.commit"]
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    aliases = MlflowClient(uri, uri).get_registered_model("s2s-builtin-en-de").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "1", "champion": "1", "champion-int8": "2"}
    sources = [row["source"] for row in sample_rows(ws, 5)]
    with mlflow_uris(uri):
        served = mlflow.pyfunc.load_model("models:/s2s-builtin-en-de@champion-int8").predict(sources)
    # The int8 champion serves what CTranslate2 makes of this very checkpoint, decoding as it was evaluated.
    from s2s.config import load_params
    from s2s.ct2 import CT2Translator, convert

    local = CT2Translator.load(convert(ws / layout.MODEL_DIR / layout.MODEL_FILE, ws / layout.TOKENIZER_DIR,
                                       tmp_path / "int8", "int8"), ws / layout.TOKENIZER_DIR)  # fmt: skip
    assert served == local.translate(sources, load_params(ws / layout.PARAMS_FILE).evaluate)


def test_sigterm_and_sigint_stop_s2s_run_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    import signal
    import time

    train = {"epochs": 8, "checkpoint_every": 5, "batch_tokens": 400}
    params = deep_merge(TINY_PARAMS, {"train": train, "remote": {"push": False}})
    ws = make_workspace(tmp_path / "ws", deep_merge(params, {"train": {"epochs": 1}}))
    env, command = s2s_env(tmp_path), s2s_command()
    subprocess.run(command, cwd=ws, env=env, check=True, capture_output=True)
    commit_run(ws, "a first model")  # what a user has: a committed run, then a change to train again
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text().replace("epochs: 1", "epochs: 8"))
    status = run(["git", "status", "--porcelain"], ws).stdout
    assert status == " M params.yaml\n"
    resume_dir = ws / layout.RESUME_DIR

    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        saved = {p: p.stat().st_mtime_ns for p in resume_dir.glob("*.pt")} if resume_dir.is_dir() else {}
        proc = subprocess.Popen(command, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while not any(saved.get(p) != p.stat().st_mtime_ns for p in resume_dir.glob("*.pt")) if resume_dir.is_dir() else True:
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be stopped"
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == code, out[-3000:]
        assert time.monotonic() - sent < 10
        line = f"s2s: {sig.name}: stopped at epoch "
        assert (line in out and out.rstrip().splitlines()[-1].startswith(line)) or line in out.splitlines()[-2], out[-1500:]
        assert run(["git", "status", "--porcelain"], ws).stdout == status  # metrics and model back as committed

    done = subprocess.run(command, cwd=ws, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = TrainSummary.read(ws / layout.TRAIN_SUMMARY)
    assert summary.resumed_at_update > 0 and summary.epochs == 8


def pipeline_while_held(ws: Path, hold: str, path: Path) -> tuple[Any, int]:
    """Run the flow while another process, running `hold` on `path`, holds a lock; its final state and the holder's pid."""
    from flows.pipeline import pipeline

    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        return pipeline(workspace=str(ws), return_state=True), holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_locked_dvc_and_registry_are_named_with_their_holders_and_the_rerun_registers_once(
    tmp_path: Path, prefect_home: None
) -> None:
    import re

    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    ws = make_workspace(tmp_path / "ws", deep_merge(TINY_PARAMS, {"train": {"epochs": 1}, "remote": {"push": False}}))
    # DVC's own lock held (a `dvc` command of the user's, say): bounded retries, then the lock file and its holder.
    dvc_lock = ws / ".dvc" / "tmp" / "lock"
    hold_dvc = (
        "import sys, time, zc.lockfile; lock = zc.lockfile.LockFile(sys.argv[1]); print('locked', flush=True); time.sleep(600)"
    )
    state, pid = pipeline_while_held(ws, hold_dvc, dvc_lock)
    held = rf"DVC's lock {re.escape(str(dvc_lock))} is held by pid {pid} \(.*zc.lockfile.*\); tried 4 times over 17 s\. "
    with pytest.raises(Exception, match=held + r"Nothing ran and nothing was lost: run again once it is free"):
        state.result()
    assert not (ws / layout.PREPARED_DIR).exists()

    database = ws / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()  # the store exists, as after any earlier run
    hold = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('BEGIN EXCLUSIVE'); "
        "print('locked', flush=True); time.sleep(600)"
    )
    state, pid = pipeline_while_held(ws, hold, database)
    assert state.is_failed()
    message = (
        rf"the MLflow registry database {re.escape(str(database))} is locked by pid {pid} \(.*sqlite3.*\)\. "
        r"The trained model is kept in the DVC cache; run the pipeline again once it is free and it registers without retraining"
    )
    with pytest.raises(Exception, match=message):
        state.result()
    assert _versions(ws) == []

    again = pipeline(workspace=str(ws))  # the lock is gone
    assert not any(again.stages_ran.values()) and again.registered.created is True
    assert [v["version"] for v in _versions(ws)] == ["1"]
