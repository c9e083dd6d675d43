"""The `s2s` command's errors: one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import main


def test_translate_with_a_missing_local_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translate", "--model", str(tmp_path / "nope"), "--tokenizer", str(tmp_path), "hello"]) == 1
    assert f"s2s: {tmp_path / 'nope' / 'model.pt'}: checkpoint not found" in capsys.readouterr().err


def test_translate_with_a_missing_registered_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["translate", "--model", "models:/no-such-model/1", "--tracking-uri", uri, "hello"]) == 1
    assert "no-such-model" in capsys.readouterr().err


def test_unknown_preset_lists_the_available_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--preset", "wmt99"]) == 2
    assert "no preset 'wmt99'; available: multi30k" in capsys.readouterr().err


def test_rollback_without_a_champion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = {"registry": {"tracking_uri": "sqlite:///mlflow.db", "model_name": "empty"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, uri).create_registered_model("empty")
    assert main(["rollback", "--workspace", str(tmp_path)]) == 1
    assert "model 'empty' has no champion to roll back" in capsys.readouterr().err


def test_bad_params_file_is_reported_by_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"registry": {"tracking_url": "x"}}))
    assert main(["rollback", "--workspace", str(tmp_path)]) == 1
    assert "registry.tracking_url: unknown key" in capsys.readouterr().err
