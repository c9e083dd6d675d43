"""The AESLC presets end to end on a slice of the shared corpus: ingest of documents, a copy-attention Transformer,
multi-reference ROUGE, registration, and the registered model served over HTTP answering a raw email."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import BIN, REPO, clean_env, deep_merge, free_port, make_workspace, start, stop, wait_http
from test_serving import post

from s2s import layout
from s2s.config import load_params
from s2s.translate import Translator

pytestmark = pytest.mark.slow

AESLC = REPO.parent / "shared" / "data" / "aeslc"
SLICE = {"train": 1200, "dev": 60, "test": 60}  # emails per split, the first ones of each file
# The presets' recipe, shrunk to a minute: what stays is copy attention, truncation, the absolute output limit.
SMALL = {
    "tokenizer": {"vocab_size": 600},
    "model": {"transformer": {"d_model": 64, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff": 128}},
    "train": {"epochs": 2, "max_minutes": 0, "max_tokens": 64, "batch_tokens": 2000, "warmup_steps": 20, "lr": 0.003,
              "valid_bleu_sentences": 60, "average_last": 0, "threads": 1},
    "evaluate": {"beam_size": 2, "batch_size": 32},
}  # fmt: skip


def slice_path(split: str) -> str:
    return f"{layout.RAW_DIR}/{split}.jsonl"  # under data/raw, the ingest stage's dep: DVC tracks the slice there


def first_test_email() -> dict[str, str]:
    with gzip.open(AESLC / "test.jsonl.gz", "rt", encoding="utf-8") as handle:
        email: dict[str, str] = json.loads(handle.readline())
    return email


def write_slice(workspace: Path) -> None:
    """The first SLICE emails of each shared file, as JSON Lines in the workspace."""
    if not (AESLC / "train.jsonl.gz").is_file():
        pytest.fail(f"AESLC not found at {AESLC}: CI provides ../shared/data/aeslc beside the checkout")
    for split, n in SLICE.items():
        with gzip.open(AESLC / f"{split}.jsonl.gz", "rt", encoding="utf-8") as handle:
            lines = [next(handle) for _ in range(n)]
        (workspace / slice_path(split)).write_text("".join(lines), encoding="utf-8")


def preset_params() -> dict[str, Any]:
    """presets aeslc + transformer-summary-cpu as `s2s run --preset` applies them, over the slice, then SMALL."""
    params: dict[str, Any] = {}
    for name in ("aeslc", "transformer-summary-cpu"):
        params = deep_merge(params, yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text()))
    files = params["ingest"]["files"]
    files.update({"train": {"jsonl": slice_path("train")}, "valid": {"jsonl": slice_path("dev")},
                  "test": {"jsonl": slice_path("test")}})  # fmt: skip
    return deep_merge(params, SMALL)


def test_the_aeslc_presets_train_register_and_serve_a_summariser(tmp_path: Path, prefect_home: None) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    ws = make_workspace(tmp_path / "ws", preset_params())
    write_slice(ws)
    result = pipeline(workspace=str(ws))

    stats = json.loads((ws / layout.INGEST_STATS).read_text())
    assert (stats["train"]["read"], stats["valid"]["kept"], stats["test"]["kept"]) == (1200, 60, 60)  # dev/test whole
    assert json.loads((ws / layout.PREPARED_DIR / layout.TEXT_FILE).read_text()) == {"newline": "¶"}
    metrics = json.loads((ws / layout.EVAL_METRICS).read_text())
    assert metrics["sentences"] == 60 and 0.0 <= metrics["rougeL"] <= 100.0
    assert "nrefs:3" in metrics["bleu_signature"]  # the three annotations are the references
    hypotheses = (ws / layout.HYPOTHESES).read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == 61 and hypotheses[1].split("\t")[0] == first_test_email()["id"]  # ids carried through

    assert result.registered.name == "s2s-aeslc-en-en" and result.registered.version == "1"
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    version = MlflowClient(uri, uri).get_model_version("s2s-aeslc-en-en", "1")
    assert version.tags["s2s.task.data"] == "aeslc"

    # Served as registered, a raw email with its line breaks (and longer than a sentence) gets a subject line: what
    # the local checkpoint gives for the same email, so the server joined its lines as the training data was.
    email = first_test_email()["body"] + "\n\n" + "Thanks again. " * 200
    assert "\n" in email and len(email) > 2000
    options = {"no_repeat_ngram": 2, "min_len": 2}
    translator = Translator.load(ws / layout.MODEL_DIR / layout.MODEL_FILE, ws / layout.TOKENIZER_DIR, "cpu")
    registered = load_params(ws / layout.PARAMS_FILE).evaluate  # how the version decodes unless a request says
    expected = translator.translate([email], registered.model_copy(update=options))[0]
    assert expected.strip()
    port = free_port()
    env = clean_env(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri)
    server = start([str(BIN / "s2s"), "serve", "1", "--workspace", str(ws), "--port", str(port)], env, tmp_path / "serve.log", ws)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 120, server, tmp_path / "serve.log")
        status, body = post(port, {"inputs": [email], "params": options})
    finally:
        stop(server)
    assert status == 200, body
    assert body["predictions"] == [expected]
