"""Registration against a real MLflow registry (SQLite): idempotent, packaged without pickles, lineage kept."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from s2s import checkpoint, tokenizer
from s2s.config import EvaluateConfig, ModelConfig, RegistryConfig, RNNConfig, TokenizerConfig
from s2s.corpus import generate_pairs
from s2s.layout import (
    EVAL_METRICS,
    HYPOTHESES,
    INGEST_STATS,
    LOCK_FILE,
    MODEL_DIR,
    MODEL_FILE,
    PARAMS_FILE,
    TOKENIZER_DIR,
    TRAIN_CURVE,
    TRAIN_SUMMARY,
)
from s2s.registry import INPUT_EXAMPLE, RESTORED_FILES, RunInputs, download_lineage, register
from s2s.translate import Translator

TRAINED_WITH = {"model": ModelConfig(rnn=RNNConfig(emb_dim=8, hidden=8)).model_dump(mode="json"), "evaluate": {"beam_size": 2}}


def _run_inputs(tmp_path: Path, name: str = "retry-test") -> RunInputs:
    """A workspace holding what the stages write, at the layout's paths, with a tiny untrained model."""
    pairs = generate_pairs(400, 1)
    tokenizer.train(
        TokenizerConfig(model_type="bpe", vocab_size=150), [s for s, _ in pairs], [t for _, t in pairs], tmp_path / TOKENIZER_DIR
    )
    cfg = ModelConfig.model_validate(TRAINED_WITH["model"])
    torch.manual_seed(0)
    from s2s.models import build_model

    checkpoint.save(tmp_path / MODEL_DIR / MODEL_FILE, build_model(cfg, 150, 150), cfg)
    files = {
        TRAIN_CURVE: "epoch,train_loss,valid_loss\n1,2.0,1.5\n",
        TRAIN_SUMMARY: json.dumps({"epochs": 1}),
        EVAL_METRICS: json.dumps({"bleu": 1.0, "chrf": 2.0, "bleu_signature": "sig"}),
        HYPOTHESES: "source\treference\thypothesis\n",
        INGEST_STATS: "{}",
        LOCK_FILE: yaml.safe_dump({"schema": "2.0", "stages": {}}),
        PARAMS_FILE: yaml.safe_dump(TRAINED_WITH),
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return RunInputs(tmp_path, RegistryConfig(tracking_uri="sqlite:///mlflow.db", model_name=name), TRAINED_WITH)


def test_registration_retry_after_a_crash_creates_no_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _run_inputs(tmp_path)
    original = MlflowClient.create_model_version
    calls = {"n": 0}

    def crash_once(self: MlflowClient, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("tracking server went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", crash_once)
    with pytest.raises(ConnectionError):
        register(inputs, "lineage-1", {}, "test")
    first = register(inputs, "lineage-1", {}, "test")  # the retry
    again = register(inputs, "lineage-1", {}, "test")  # a retry after success
    assert (first.version, first.created) == ("1", True)
    assert (again.version, again.created) == ("1", False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert [str(v.version) for v in MlflowClient(uri, uri).search_model_versions("name = 'retry-test'")] == ["1"]


def test_model_is_packaged_from_code_with_a_signature_and_loads_from_its_uri_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = tmp_path / "ws"
    inputs = _run_inputs(ws, "packaged")
    with caplog.at_level(logging.WARNING):
        registered = register(inputs, "lineage-p", {}, "test")
    assert not [r for r in caplog.records if "CloudPickle" in r.getMessage() or "pickle" in r.getMessage().lower()]

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    local = Path(client.download_artifacts(registered.run_id, "model", str(tmp_path / "dl")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert not list(local.rglob("*.pkl")), "no pickled python_model"
    assert mlmodel["flavors"]["python_function"]["model_code_path"].endswith("s2s_model.py")
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "string", "required": True}]
    assert json.loads(mlmodel["signature"]["outputs"]) == [{"type": "string", "required": True}]
    assert json.loads((local / "serving_input_example.json").read_text()) == {
        "inputs": INPUT_EXAMPLE,
        "params": {"beam_size": 2, "length_penalty": 1.0, "max_len_a": 1.5, "max_len_b": 10},
    }
    assert (local / "code" / "s2s" / "registry.py").is_file()  # the version carries the code it runs

    # Logged params are what the stages ran with (here: TRAINED_WITH), flattened.
    logged = client.get_run(registered.run_id).data.params
    assert logged["model.rnn.hidden"] == "8" and logged["evaluate.beam_size"] == "2"

    # A fresh process, another working directory, nothing but the URI: the same translations as the checkpoint's.
    script = (
        "import json, mlflow.pyfunc\n"
        f"mlflow.set_registry_uri({uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/packaged/1')\n"
        "print(json.dumps(list(model.predict(['We saw a big dog yesterday.', 'They sold the old book.']))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    translator = Translator.load(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, "cpu")
    assert got == translator.translate(["We saw a big dog yesterday.", "They sold the old book."], EvaluateConfig(beam_size=2))


def test_download_lineage_puts_the_versions_files_back_at_their_paths(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    inputs = _run_inputs(ws, "lineage")
    register(inputs, "lineage-l", {}, "test")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    target = tmp_path / "clone"
    target.mkdir()
    version = download_lineage(MlflowClient(uri, uri), "lineage", "1", target)
    assert str(version.version) == "1"
    for path in RESTORED_FILES:
        assert (target / path).read_bytes() == (ws / path).read_bytes(), path
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found|does not exist"):
        download_lineage(MlflowClient(uri, uri), "lineage", "7", target)


def test_registered_model_honours_decoding_options_per_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    ws = tmp_path / "ws"
    register(_run_inputs(ws, "options"), "lineage-o", {}, "test")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    translator = Translator.load(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, "cpu")
    sources = [s for s, _ in generate_pairs(40, 7)]
    greedy = translator.translate(sources, EvaluateConfig(beam_size=1))
    beam5 = translator.translate(sources, EvaluateConfig(beam_size=5))
    sentence = next(s for s, g, b in zip(sources, greedy, beam5, strict=True) if g != b)  # where the two searches differ

    def translate(*options: str) -> str:
        assert main(["translate", "--model", "models:/options/1", "--tracking-uri", uri, *options, sentence]) == 0
        return capsys.readouterr().out.strip()

    by_beam = {beam: translate("--beam", str(beam)) for beam in (1, 5)}
    assert by_beam == {1: translator.translate([sentence], EvaluateConfig(beam_size=1))[0],
                       5: translator.translate([sentence], EvaluateConfig(beam_size=5))[0]}  # fmt: skip
    assert by_beam[1] != by_beam[5]
    assert translate() == translator.translate([sentence], EvaluateConfig(beam_size=2))[0]  # no option: as registered
    short = translate("--max-len-a", "0.1", "--max-len-b", "1")
    assert short == translator.translate([sentence], EvaluateConfig(beam_size=2, max_len_a=0.1, max_len_b=1))[0]

    assert main(["translate", "--model", "models:/options/1", "--tracking-uri", uri, "--beam", "0", sentence]) == 2
    assert "s2s translate: invalid configuration\n  beam_size: Input should be greater than or equal to 1" in (
        capsys.readouterr().err
    )
    assert main(["translate", "--model", "models:/options/1", "--tracking-uri", uri, "--n-best", "3", sentence]) == 2
    assert "--n-best needs a local model folder" in capsys.readouterr().err
