"""The task a registered model holds (s2s/task.py): derived from the ingest params, recorded as tags, compared."""

from __future__ import annotations

import pytest

from s2s.config import ConfigError, parse_params
from s2s.task import Task, resolve_registry

OWN_FILES = {"corpus": "files", "files": {"train": {"tsv": "data/raw/train.tsv"}}}


def test_task_and_default_model_name_come_from_the_data() -> None:
    builtin = parse_params({})
    assert Task.of(builtin.ingest) == Task("en", "de", "builtin")
    assert resolve_registry(builtin).name == "s2s-builtin-en-de"
    own = parse_params({"ingest": {**OWN_FILES, "src_lang": "en", "tgt_lang": "fr"}})
    assert Task.of(own.ingest) == Task("en", "fr", "") and resolve_registry(own).name == "s2s-en-fr"
    named = parse_params({"ingest": {**OWN_FILES, "dataset": "multi30k"}})
    assert resolve_registry(named).name == "s2s-multi30k-en-de"
    mine = parse_params({"ingest": OWN_FILES, "registry": {"model_name": "my-translator"}})
    assert resolve_registry(mine).name == "my-translator"  # a name given wins


def test_an_unresolved_name_and_a_bad_dataset_name_are_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="registry.model_name is not resolved"):
        _ = parse_params({}).registry.name
    with pytest.raises(ConfigError, match=r"ingest.dataset: String should match pattern"):
        parse_params({"ingest": {"dataset": "my data/v2"}})


def test_tags_round_trip_and_differences_name_the_params_keys() -> None:
    task = Task("en", "de", "multi30k")
    assert Task.from_tags({**task.tags(), "other": "x"}) == task
    assert Task.from_tags({"git.commit": "abc"}) is None  # a version registered before tasks were recorded
    assert task.differences(Task("en", "de", "multi30k")) == []
    assert task.differences(Task("de", "en", "")) == [
        "ingest.src_lang en vs de", "ingest.tgt_lang de vs en", "ingest.dataset multi30k vs (none)"
    ]  # fmt: skip
