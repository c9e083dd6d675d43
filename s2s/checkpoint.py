"""Checkpoints that carry the config which rebuilds their model.

Files are written atomically (temporary file, then rename) and read with
`weights_only=True`, so loading a checkpoint never executes code from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from s2s.config import EvaluateConfig, ModelConfig, TrainConfig
from s2s.errors import S2SError
from s2s.models import Seq2Seq, build_model

log = logging.getLogger(__name__)

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
    trained = payload.get("train_config") or {}
    if trained.get("long_sources") == "truncate":
        # Trained on sources cut to max_tokens: every engine cuts them there too, as training saw them.
        limit = int(trained["max_tokens"])
        model.max_source_tokens = min(model.max_source_tokens or limit, limit)
    model.to(device).eval()
    return model, cfg, payload


# ------------------------------------------------------------------------------------------------ resume states

RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "progress")  # what a resume state holds


def resume_key(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    eval_cfg: EvaluateConfig,
    prepared: Path,
    tokenizer_dir: Path,
    encoded: Path | None = None,
) -> str:
    """What a resume state belongs to: the same configs, data and tokenizer, nothing else.

    The process layout is left out: a run killed on N processes may continue on M (the update is the same). With
    the encode stage's files, their meta.json (which holds each file's sha256) stands for the training data.
    """
    configs = [cfg.model_dump(exclude={"distributed"}), model_cfg.model_dump(), eval_cfg.model_dump()]
    digest = hashlib.sha256(json.dumps(configs, sort_keys=True).encode())
    data = [*prepared.glob("valid.*"), *(encoded.glob("meta.json") if encoded is not None else prepared.glob("train.*"))]
    for path in sorted([*data, *tokenizer_dir.glob("*")]):
        digest.update(path.name.encode())
        with path.open("rb") as handle:  # in blocks: a corpus of millions of pairs is not read into memory
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:24]


def read_resume(path: Path) -> dict[str, Any] | None:
    """A resume state written by `atomic_torch_save`; None when there is none or it cannot be read (a warning)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        log.warning("ignoring unreadable resume state %s: %s", path, err)
        return None
    return dict(state)
