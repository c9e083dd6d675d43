"""Serving: `s2s export` into the registry, and `mlflow models serve` on the exported version, good and bad requests."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from support import BIN, clean_env, free_port, mlflow_uris, run_inputs, start, stop, wait_http

from flows.cli import main
from s2s.config import EvaluateConfig
from s2s.corpus import generate_pairs
from s2s.ct2 import CT2Translator, ExportError, convert
from s2s.layout import MODEL_DIR, MODEL_FILE, TOKENIZER_DIR
from s2s.registry import (
    CHAMPION,
    ENGINE_TAG,
    EXPORTED_FROM_TAG,
    LINEAGE_TAG,
    export_version,
    promote,
    register,
    rollback,
)
from s2s.serving import RequestBatcher, ServeLimits

TRANSFORMER = {
    "model": {"arch": "transformer", "transformer": {"d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                                                     "ff": 64, "max_positions": 128}},
    "evaluate": {"beam_size": 2},
}  # fmt: skip
SOURCES = [s for s, _ in generate_pairs(30, 7)]


def post(port: int, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Transformer registered as v1 and exported to CTranslate2 int8 as v2, both in a real SQLite registry."""
    tmp = tmp_path_factory.mktemp("serving")
    ws = tmp / "ws"
    register(run_inputs(ws, "served", TRANSFORMER), "lineage-t", {"git.commit": "abc123"}, "a Transformer")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    with mlflow_uris(uri):
        client = MlflowClient(uri, uri)
        exported = export_version(client, "served", "1", "int8", tmp / "staging")
        assert (exported.version, exported.created) == ("2", True)
        local = CT2Translator.load(
            convert(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, tmp / "int8", "int8"), ws / TOKENIZER_DIR
        )
        yield {"ws": ws, "tmp": tmp, "uri": uri, "client": client, "local": local}


@pytest.fixture(scope="module")
def served(registry: dict[str, Any]) -> Iterator[int]:
    """`mlflow models serve` on the exported version, on a free loopback port."""
    port, tmp = free_port(), registry["tmp"]
    env = clean_env(MLFLOW_TRACKING_URI=registry["uri"], MLFLOW_REGISTRY_URI=registry["uri"])
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/served/2", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = start(cmd, env, tmp / "serve.log", tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 120, server, tmp / "serve.log")
        yield port
    finally:
        stop(server)


@pytest.mark.slow
def test_export_registers_a_version_with_engine_and_lineage_once(registry: dict[str, Any]) -> None:
    client: MlflowClient = registry["client"]
    source, exported = client.get_model_version("served", "1"), client.get_model_version("served", "2")
    assert exported.tags[ENGINE_TAG] == "ctranslate2-int8" and source.tags[ENGINE_TAG] == "pytorch"
    assert exported.tags[EXPORTED_FROM_TAG] == "1"
    assert exported.tags[LINEAGE_TAG] == source.tags[LINEAGE_TAG] and exported.tags["git.commit"] == "abc123"
    assert "converted to CTranslate2 (int8)" in exported.description
    # Idempotent: the same export again, by alias or number, registers nothing.
    client.set_registered_model_alias("served", CHAMPION, "1")
    again = export_version(client, "served", CHAMPION, "int8", registry["tmp"] / "staging")
    assert (again.version, again.created) == ("2", False)
    # Registering the same lineage again (into the same registry) finds the PyTorch version, not its export.
    inputs = run_inputs(registry["tmp"] / "ws2", "served", TRANSFORMER)
    inputs = replace(inputs, registry=inputs.registry.model_copy(update={"tracking_uri": registry["uri"]}))
    found = register(inputs, "lineage-t", {}, "x")
    assert (found.version, found.created) == ("1", False)
    with pytest.raises(ExportError, match=r"served v2 is itself an export \(ctranslate2-int8\); export its source, v1"):
        export_version(client, "served", "2", "float32", registry["tmp"] / "staging")
    assert [str(v.version) for v in client.search_model_versions("name = 'served'")] == ["2", "1"]


@pytest.mark.slow
def test_a_recurrent_version_is_refused_and_nothing_registered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    register(run_inputs(ws, "recurrent"), "lineage-r", {}, "an RNN")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    code = main(["export", "models:/recurrent/1", "--quantization", "int8", "--workspace", str(ws), "--tracking-uri", uri])
    assert code == 1
    assert "a recurrent model (model.arch=rnn, decoder luong) cannot be exported to CTranslate2" in capsys.readouterr().err
    assert [str(v.version) for v in MlflowClient(uri, uri).search_model_versions("name = 'recurrent'")] == ["1"]
    assert not (ws / ".cache" / "export").exists()


@pytest.mark.slow
def test_export_aliases_follow_the_champion(registry: dict[str, Any], tmp_path: Path) -> None:
    client: MlflowClient = registry["client"]
    promote(client, "served", "1", "test")
    client.set_registered_model_alias("served", "champion-int8", "2")
    promote(client, "served", "2", "hand")  # an export as champion: it has no export of its own
    assert "champion-int8" not in client.get_registered_model("served").aliases
    client.set_registered_model_alias("served", "champion-int8", "2")
    rollback(client, "served")  # back to v1, whose int8 export is v2
    aliases = client.get_registered_model("served").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "champion-int8": "2"}


@pytest.mark.slow
def test_the_exported_version_loads_with_pyfunc_and_translates(registry: dict[str, Any]) -> None:
    with mlflow_uris(registry["uri"]):
        model = mlflow.pyfunc.load_model("models:/served/2")
    registered = EvaluateConfig(beam_size=2)  # as evaluated: TRANSFORMER's evaluate section
    assert model.predict(SOURCES[:5]) == registry["local"].translate(SOURCES[:5], registered)
    assert model.predict(SOURCES[:2], params={"n_best": 2}) == registry["local"].translate_nbest(SOURCES[:2], 2, registered)


@pytest.mark.slow
def test_served_export_takes_decoding_options_per_request(registry: dict[str, Any], served: int) -> None:
    local: CT2Translator = registry["local"]
    greedy, beam5 = local.translate(SOURCES, EvaluateConfig()), local.translate(SOURCES, EvaluateConfig(beam_size=5))
    sentence = next(s for s, g, b in zip(SOURCES, greedy, beam5, strict=True) if g != b)
    answers = {beam: post(served, {"inputs": [sentence], "params": {"beam_size": beam}}) for beam in (1, 5)}
    assert answers == {1: (200, {"predictions": local.translate([sentence], EvaluateConfig())}),
                       5: (200, {"predictions": local.translate([sentence], EvaluateConfig(beam_size=5))})}  # fmt: skip
    status, body = post(served, {"inputs": [sentence], "params": {"n_best": 3, "length_penalty": 0.0}})
    assert status == 200 and body["predictions"] == local.translate_nbest([sentence], 3, EvaluateConfig(length_penalty=0.0))


BAD_REQUESTS: dict[str, tuple[bytes | dict[str, Any], str]] = {
    "malformed JSON": (b'{"inputs": ["a", ', "Ensure that input is a valid JSON formatted string"),
    "not strings": ({"inputs": [1, 2]}, "invalid elements: [('1', 'Expected type str, but got int')"),  # MLflow's check
    "60,000 characters": ({"inputs": ["a" * 60_000]}, "input 0 has 60000 characters; at most 50000 per input"),
    "10,000 sentences": ({"inputs": ["A dog."] * 10_000}, "10000 sentences in one request; at most 1000"),
    "beam_size 0": ({"inputs": ["A dog."], "params": {"beam_size": 0}}, "beam_size: Input should be greater than"),
    "beam_size 'five'": ({"inputs": ["A dog."], "params": {"beam_size": "five"}}, "beam_size"),
    "beam_size 100": ({"inputs": ["A dog."], "params": {"beam_size": 100}}, "beam_size: 100 is above this server's maximum"),
    "n_best 0": ({"inputs": ["A dog."], "params": {"n_best": 0}}, "n_best: expected a whole number >= 1, got 0"),
}


@pytest.mark.slow
def test_bad_requests_get_a_400_naming_the_fault_and_others_are_still_served(registry: dict[str, Any], served: int) -> None:
    good: list[tuple[int, Any]] = []
    stop_good = threading.Event()

    def client() -> None:  # another user, asking the whole time
        while not stop_good.is_set():
            good.append(post(served, {"inputs": SOURCES[:3]}))

    other = threading.Thread(target=client)
    other.start()
    try:
        answers = {name: post(served, body) for name, (body, _) in BAD_REQUESTS.items()}
    finally:
        stop_good.set()
        other.join()
    wrong = {name: (status, body.get("message", "")[:300]) for name, (status, body) in answers.items()
             if status != 400 or BAD_REQUESTS[name][1] not in body.get("message", "")}  # fmt: skip
    assert not wrong
    expected = registry["local"].translate(SOURCES[:3], EvaluateConfig(beam_size=2))
    assert good and all(answer == (200, {"predictions": expected}) for answer in good)
    assert post(served, {"inputs": []}) == (200, {"predictions": []})


def test_serve_limits_come_from_the_environment() -> None:
    assert ServeLimits.from_env({"S2S_MAX_SENTENCES": "5", "S2S_MAX_CHARS": "0"}) == ServeLimits(5, 0, 16)
    with pytest.raises(ValueError, match=r"S2S_MAX_BEAM='many': expected a whole number >= 0"):
        ServeLimits.from_env({"S2S_MAX_BEAM": "many"})


def test_concurrent_requests_with_the_same_options_are_decoded_as_one_batch() -> None:
    calls: list[tuple[list[str], int]] = []
    release = threading.Event()

    def decode(sources: list[str], cfg: EvaluateConfig, n_best: int) -> list[str]:
        calls.append((list(sources), cfg.beam_size))
        release.wait(5)  # the first batch holds the decoder while the others queue
        if "boom" in sources:
            raise RuntimeError("engine failed")
        return [s.upper() for s in sources]

    batcher = RequestBatcher(decode)
    results: dict[str, Any] = {}

    def ask(name: str, sources: list[str], beam: int) -> None:
        try:
            results[name] = batcher(sources, EvaluateConfig(beam_size=beam), 1)
        except RuntimeError as err:
            results[name] = str(err)

    first = threading.Thread(target=ask, args=("first", ["a"], 1))
    first.start()
    while not calls:
        threading.Event().wait(0.01)
    waiting = [threading.Thread(target=ask, args=args) for args in
               (("b", ["b", "c"], 1), ("d", ["d"], 1), ("beam", ["e"], 5), ("bad", ["boom"], 3))]  # fmt: skip
    for queued, thread in enumerate(waiting, 1):  # one at a time, so the queue's order is known
        thread.start()
        while len(batcher.queue) < queued:
            threading.Event().wait(0.01)
    release.set()
    for thread in [first, *waiting]:
        thread.join()
    assert results == {"first": ["A"], "b": ["B", "C"], "d": ["D"], "beam": ["E"], "bad": "engine failed"}
    # One call for the first request; then the queued ones with equal options together, in arrival order.
    assert calls[0] == (["a"], 1) and sorted(calls[1:]) == [(["b", "c", "d"], 1), (["boom"], 3), (["e"], 5)]


def test_decoding_with_applies_a_requests_options_over_the_registered_decoding() -> None:
    from s2s.serving import RequestError, decoding_with

    registered = EvaluateConfig(beam_size=5, max_len_b=7, attention_maps=2, also=("greedy",))
    cfg, n = decoding_with(registered, None)
    assert (cfg.beam_size, cfg.max_len_b, n) == (5, 7, 1) and not hasattr(cfg, "attention_maps")  # decoding keys only
    assert decoding_with(registered, {"n_best": 3})[0].beam_size == 5  # the registered beam already returns 3
    cfg, n = decoding_with(registered, {"beam_size": 2, "n_best": 3, "max_len_b": None})
    assert (cfg.beam_size, cfg.max_len_b, n) == (3, 7, 3)  # widened to return 3; None is "not given"
    with pytest.raises(RequestError, match=r"unknown decoding option\(s\) beam; accepted: beam_size, n_best"):
        decoding_with(registered, {"beam": 2})
    with pytest.raises(RequestError, match=r"n_best: expected a whole number >= 1, got 0"):
        decoding_with(registered, {"n_best": 0})
    with pytest.raises(RequestError, match=r"decoding options: invalid configuration\n  beam_size: Input should be greater"):
        decoding_with(registered, {"beam_size": 0})
