"""Registration against a real MLflow registry (SQLite): idempotent, packaged without pickles, lineage kept."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from support import run_inputs

from s2s.config import EvaluateConfig
from s2s.corpus import generate_pairs
from s2s.layout import MODEL_DIR, MODEL_FILE, TOKENIZER_DIR
from s2s.registry import INPUT_EXAMPLE, RESTORED_FILES, download_lineage, register
from s2s.translate import Translator


def test_registration_retry_after_a_crash_creates_no_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = run_inputs(tmp_path, "retry-test")
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
    inputs = run_inputs(ws, "packaged")
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
        "params": {
            "beam_size": 2,
            "n_best": 1,
            "length_penalty": 1.0,
            "max_len_a": 1.5,
            "max_len_b": 10,
            "min_len": 0,
            "no_repeat_ngram": 0,
        },
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
    inputs = run_inputs(ws, "lineage")
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
    register(run_inputs(ws, "options"), "lineage-o", {}, "test")
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
    # `s2s generate` is the same command under a task-neutral name; the summary options pass through per request.
    assert main(["generate", "--model", "models:/options/1", "--tracking-uri", uri, "--beam", "1", "--min-len", "6",
                 "--no-repeat-ngram", "1", sentence]) == 0  # fmt: skip
    constrained = translator.translate([sentence], EvaluateConfig(beam_size=1, min_len=6, no_repeat_ngram=1))[0]
    assert capsys.readouterr().out.strip() == constrained != by_beam[1]

    assert main(["translate", "--model", "models:/options/1", "--tracking-uri", uri, "--beam", "0", sentence]) == 2
    assert "s2s translate: invalid configuration\n  beam_size: Input should be greater than or equal to 1" in (
        capsys.readouterr().err
    )
    # n-best through the registered model (its `n_best` param): one line per hypothesis, as from a local folder.
    nbest = translator.translate_nbest([sentence], 3, EvaluateConfig(beam_size=3))[0]
    assert translate("--n-best", "3") == "\n".join(f"1\t{rank}\t{text}" for rank, text in enumerate(nbest, 1))


def test_lineage_key_is_the_tokenizer_model_and_decoding_only() -> None:
    from s2s import layout
    from s2s.registry import lineage_key

    outs = {layout.TOKENIZER_DIR: "a.dir", layout.MODEL_DIR: "b.dir", layout.PREPARED_DIR: "c.dir"}
    key = lineage_key(outs, EvaluateConfig(beam_size=5))
    assert len(key) == 32 and key == lineage_key(dict(outs), EvaluateConfig(beam_size=5))
    assert lineage_key({**outs, layout.PREPARED_DIR: "other.dir"}, EvaluateConfig(beam_size=5)) == key  # data: not itself
    assert lineage_key(outs, EvaluateConfig(beam_size=5, batch_size=7, attention_maps=0, also=("greedy",))) == key
    assert lineage_key({**outs, layout.MODEL_DIR: "new.dir"}, EvaluateConfig(beam_size=5)) != key
    assert lineage_key(outs, EvaluateConfig(beam_size=4)) != key
    assert lineage_key(outs, EvaluateConfig(beam_size=5, length_penalty=0.6)) != key
