"""Checkpoints that carry the config which rebuilds their model.

Files are written atomically (temporary file, then rename) and read with
`weights_only=True`, so loading a checkpoint never executes code from it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from s2s.config import ModelConfig
from s2s.errors import S2SError
from s2s.models import Seq2Seq, build_model

FORMAT = "s2s-checkpoint"
# 2: the recurrent decoders follow their papers (model.rnn.decoder). Version 1 Transformers still load as they are.
VERSION = 2


class CheckpointError(S2SError, RuntimeError):
    pass


def save(path: Path, model: Seq2Seq, model_cfg: ModelConfig, extra: dict[str, Any] | None = None) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model_cfg.model_dump(),
        "src_vocab": model.src_vocab,
        "tgt_vocab": model.tgt_vocab,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_with_partials(path: Path) -> None:
    """Delete `path` and the temporary files of atomic writes to it that a kill interrupted (`.NAME-XXXX`)."""
    path.unlink(missing_ok=True)
    for partial in path.parent.glob(f".{path.name}-*"):
        partial.unlink(missing_ok=True)


def read(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict, with a clear error for missing, truncated or foreign files."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable s2s checkpoint (truncated or foreign file?): {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an s2s checkpoint (no '{FORMAT}' marker)")
    version = payload.get("version")
    if version == 1 and payload.get("model_config", {}).get("arch") == "rnn":
        raise CheckpointError(
            f"{path}: a recurrent model from before the decoders followed their papers (checkpoint version 1); "
            "retrain it (registered versions keep loading: each carries the code it was trained with)"
        )
    if version not in (1, VERSION):
        raise CheckpointError(f"{path}: checkpoint version {version} is not supported (expected {VERSION})")
    return payload


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[Seq2Seq, ModelConfig, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone (no params file needed)."""
    payload = read(path)
    cfg = ModelConfig.model_validate(payload["model_config"])
    model = build_model(cfg, payload["src_vocab"], payload["tgt_vocab"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {err}") from None
    model.to(device).eval()
    return model, cfg, payload
