"""Config is validated once, on the way in, with errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from s2s.config import ConfigError, Params, load_params, parse_params

REPO = Path(__file__).resolve().parent.parent


def test_repository_params_and_presets_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.ingest.corpus == "builtin"
    assert params.model.rnn.attention == "general"
    for preset in sorted((REPO / "presets").glob("*.yaml")):
        load_params(preset)


def test_every_params_key_has_a_comment() -> None:
    for path in [REPO / "params.yaml"]:  # presets set a few keys each; params.yaml explains every one
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.match(r"^\s*[A-Za-z_]+:", line) and not re.match(r"^[a-z]+:\s*$", line):
                assert "#" in line, f"{path.name}:{number} has no comment: {line.strip()}"


def test_defaults_fill_missing_sections() -> None:
    params = parse_params({"train": {"epochs": 1}})
    assert params.train.epochs == 1
    assert params.evaluate.beam_size == 1
    assert parse_params({"train": None}).train == Params().train


def test_unknown_key_is_named_with_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"epochz": 3}}, "params.yaml")
    message = str(err.value)
    assert "params.yaml" in message
    assert "train.epochz: unknown key" in message
    assert "allowed:" in message and "epochs" in message and "batch_tokens" in message


def test_unknown_section_and_nested_key() -> None:
    with pytest.raises(ConfigError, match=r"trian: unknown key \(allowed: .*train"):
        parse_params({"trian": {}})
    with pytest.raises(ConfigError, match=r"model\.rnn\.hiden: unknown key \(allowed: .*hidden"):
        parse_params({"model": {"rnn": {"hiden": 3}}})


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"train": {"epochs": "many"}}, r"train\.epochs: .*integer.*'many'"),
        ({"evaluate": {"beam_size": 0}}, r"evaluate\.beam_size: .*greater than or equal to 1.*got 0"),
        ({"model": {"rnn": {"attention": "luong"}}}, r"model\.rnn\.attention: .*'dot', 'general' or 'concat'"),
        ({"model": {"rnn": {"decoder": "elman"}}}, r"model\.rnn\.decoder: .*'sutskever', 'cho', 'bahdanau' or 'luong'"),
        ({"model": {"rnn": {"attention": "none"}}}, r"model\.rnn\.attention: .*no longer an attention: .*decoder: sutskever"),
        ({"model": {"rnn": {"attention": "additive"}}}, r"model\.rnn\.attention: .*decoder: bahdanau"),
        ({"train": {"teacher_forcing": 1.5}}, r"train\.teacher_forcing: .*less than or equal to 1"),
        ({"train": {"adam_betas": [0.9, 1.0]}}, r"train\.adam_betas\.1: .*less than 1"),
        ({"model": {"transformer": {"attention_dropout": -0.1}}}, r"model\.transformer\.attention_dropout: .*greater than"),
        ({"ingest": {"corpus": "files"}}, r"files.*missing"),
        ({"ingest": {"corpus": "files", "files": {"train": {"src": "a.en"}}}}, r"ingest\.files\.train: .*both `src` and `tgt`"),
        ({"ingest": {"corpus": "files", "files": {"train": {"tsv": {"path": "x", "sha256": "abc"}}}}}, r"sha256: .*pattern"),
    ],
)
def test_wrong_types_and_impossible_values(raw: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_params(raw)


def test_config_is_frozen() -> None:
    params = Params()
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 9  # type: ignore[misc]


def test_load_params_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(listed)
