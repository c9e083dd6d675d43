"""The `s2s` command's errors: one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
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
    assert (
        "no preset 'wmt99'; available: aeslc, bahdanau-gru, cho-gru, context-gru, luong-lstm, multi30k, sutskever-lstm, "
        in capsys.readouterr().err
    )


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


@pytest.mark.parametrize("command", [["run"], ["schedule", "--cron", "0 3 * * *"]])
def test_params_option_is_refused_with_the_reason(command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"train": {"epochs": 9}}))
    assert main([*command, "--workspace", str(tmp_path), "--params", str(other)]) == 2
    err = capsys.readouterr().err
    assert "--params is no longer accepted: the DVC stages always read params.yaml" in err
    assert "use --preset NAME|FILE" in err
    assert not (tmp_path / "params.yaml").exists()  # nothing was written or run


def test_preset_from_a_file_is_validated_before_it_replaces_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epochz": 9}}))
    assert main(["run", "--workspace", str(tmp_path), "--preset", str(bad)]) == 2
    assert "train.epochz: unknown key" in capsys.readouterr().err
    assert (tmp_path / "params.yaml").read_text() == "train:\n  epochs: 3\n"


def test_stack_env_without_a_stack_says_how_to_start_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "env", "--dir", str(tmp_path / "none")]) == 1
    assert "no stack in" in capsys.readouterr().err and not (tmp_path / "none").exists()


def _s2s(*args: str) -> subprocess.CompletedProcess[str]:
    """`s2s sweep` in its own process: it imports Prefect, whose logging setup outlives pytest's captured streams."""
    return subprocess.run([str(Path(sys.executable).parent / "s2s"), *args], capture_output=True, text=True, timeout=120)


def test_sweep_with_a_bad_space_file_names_the_key_and_creates_no_study(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"train.lrr": {"low": 0.001, "high": 0.01}}}))
    out = _s2s("sweep", str(space), "--workspace", str(tmp_path))
    assert out.returncode == 1 and f"s2s: {space}: train.lrr: no such param" in out.stderr
    assert not (tmp_path / "sweeps.db").exists()  # refused before any study or MLflow run exists


def test_sweep_best_of_an_unknown_study(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    out = _s2s("sweep", str(tmp_path / "nope.yaml"), "--workspace", str(tmp_path), "--storage", storage, "--best")
    assert out.returncode == 1 and "no study 'nope' in sqlite:///" in out.stderr
