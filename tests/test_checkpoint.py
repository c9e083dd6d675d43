"""Checkpoints rebuild their model alone, and bad files give clear errors without running code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2s import checkpoint
from s2s.checkpoint import CheckpointError
from s2s.config import ModelConfig, RNNConfig, TransformerConfig
from s2s.models import build_model


def _saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    cfg = ModelConfig(rnn=RNNConfig(cell="gru", decoder="bahdanau", maxout=True, emb_dim=8, hidden=12))
    torch.manual_seed(0)
    model = build_model(cfg, 30, 31).eval()
    path = tmp_path / "model.pt"
    checkpoint.save(path, model, cfg, {"epoch": 3})
    return path, model


def test_checkpoint_rebuilds_the_same_model_without_params(tmp_path: Path) -> None:
    path, model = _saved(tmp_path)
    loaded, cfg, payload = checkpoint.load_model(path)
    assert cfg.rnn.cell == "gru" and cfg.rnn.decoder == "bahdanau" and cfg.rnn.maxout
    assert payload["epoch"] == 3 and (loaded.src_vocab, loaded.tgt_vocab) == (30, 31)
    src, src_len, tgt = torch.tensor([[4, 5, 6]]), torch.tensor([3]), torch.tensor([[2, 7, 8]])
    torch.testing.assert_close(loaded(src, src_len, tgt).logits, model(src, src_len, tgt).logits)


def test_missing_truncated_and_foreign_files(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="nothing.pt: checkpoint not found"):
        checkpoint.read(tmp_path / "nothing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable s2s checkpoint"):
        checkpoint.read(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not an s2s checkpoint"):
        checkpoint.read(foreign)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_loading_never_executes_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "s2s-checkpoint", "x": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable s2s checkpoint"):
        checkpoint.read(evil)
    assert "must never run" not in capsys.readouterr().out


def test_remove_with_partials_deletes_the_file_and_interrupted_writes_only(tmp_path: Path) -> None:
    state = tmp_path / "abc.pt"
    for name in ("abc.pt", ".abc.pt-k3j2", ".abc.pt-zz9", "other.pt", ".other.pt-x1"):
        (tmp_path / name).write_bytes(b"x")
    checkpoint.remove_with_partials(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt-x1", "other.pt"]
    checkpoint.remove_with_partials(state)  # nothing left to remove: no error


def test_version_1_recurrent_checkpoints_are_refused_transformers_still_load(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    payload = checkpoint.read(path)
    old = tmp_path / "old.pt"
    checkpoint.atomic_torch_save({**payload, "version": 1}, old)
    with pytest.raises(CheckpointError, match=r"old\.pt: a recurrent model from before .*version 1.*retrain it"):
        checkpoint.load_model(old)
    cfg = ModelConfig(arch="transformer", transformer=TransformerConfig(d_model=16, heads=2, ff=32))
    transformer = build_model(cfg, 30, 30)
    checkpoint.save(path, transformer, cfg)
    checkpoint.atomic_torch_save({**checkpoint.read(path), "version": 1}, old)
    assert checkpoint.load_model(old)[1].arch == "transformer"
