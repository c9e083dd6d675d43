"""The training loop: token-bucketed batches, teacher forcing, per-epoch validation.

Writes the best checkpoint (by validation BLEU), a per-epoch CSV for `dvc
plots` and a JSON summary. Knows nothing of DVC, Prefect or MLflow.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from s2s import checkpoint
from s2s.batching import Batch, ParallelData
from s2s.config import EvaluateConfig, ModelConfig, TrainConfig
from s2s.errors import S2SError
from s2s.evaluate import score
from s2s.ingest import read_prepared
from s2s.models import Seq2Seq, build_model
from s2s.tokenizer import PAD, Tokenizers
from s2s.translate import MODEL_FILE, Translator, resolve_device

log = logging.getLogger(__name__)

CURVE_FIELDS = ("epoch", "train_loss", "valid_loss", "valid_ppl", "valid_bleu", "tokens_per_second", "seconds")


class TrainingError(S2SError, RuntimeError):
    pass


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_ppl: float
    valid_bleu: float
    tokens_per_second: float
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def encode_split(tok: Tokenizers, prepared: Path, split: str, max_tokens: int) -> tuple[ParallelData, list[tuple[str, str]], int]:
    """Tokenize a split once; pairs longer than `max_tokens` subwords are left out of training, and counted."""
    pairs = read_prepared(prepared, split)
    src = tok.encode_src([s for s, _ in pairs])
    tgt = tok.encode_tgt([t for _, t in pairs])
    keep = [i for i in range(len(pairs)) if 0 < len(src[i]) <= max_tokens and 0 < len(tgt[i]) <= max_tokens]
    dropped = len(pairs) - len(keep)
    return ParallelData([src[i] for i in keep], [tgt[i] for i in keep]), [pairs[i] for i in keep], dropped


def batch_loss(model: Seq2Seq, batch: Batch, criterion: nn.Module, teacher_forcing: float) -> torch.Tensor:
    out = model(batch.src, batch.src_len, batch.tgt_in, teacher_forcing)
    return criterion(out.logits.reshape(-1, out.logits.size(-1)).float(), batch.tgt_out.reshape(-1))


@torch.no_grad()
def validation_loss(model: Seq2Seq, batches: list[Batch], device: torch.device) -> float:
    model.eval()
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")
    total, tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        total += float(batch_loss(model, batch, criterion, 1.0))
        tokens += batch.n_tgt_tokens
    return total / max(tokens, 1)


def lr_factor(step: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant or decaying as 1/sqrt(step)."""
    step = max(step, 1)
    if warmup and step < warmup:
        return step / warmup
    if schedule == "inverse_sqrt":
        return (max(warmup, 1) / step) ** 0.5
    return 1.0


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def train(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    eval_cfg: EvaluateConfig,
    prepared: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    curve_path: Path,
    summary_path: Path,
) -> dict[str, object]:
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tok = Tokenizers.load(tokenizer_dir)
    train_data, _, too_long = encode_split(tok, prepared, "train", cfg.max_tokens)
    valid_data, valid_pairs, _ = encode_split(tok, prepared, "valid", cfg.max_tokens)
    if len(train_data) == 0:
        raise TrainingError(f"no training pairs left: all {too_long} exceed train.max_tokens={cfg.max_tokens}")
    if too_long:
        log.warning("left out %d training pairs longer than train.max_tokens=%d subwords", too_long, cfg.max_tokens)

    model = build_model(model_cfg, tok.src.get_piece_size(), tok.tgt.get_piece_size()).to(device)
    log.info("model: %s, %.2fM parameters, device %s", model_cfg.arch, model.num_parameters() / 1e6, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step + 1, cfg.warmup_steps, cfg.lr_schedule))
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=cfg.label_smoothing)
    valid_batches = valid_data.batches(cfg.batch_tokens, shuffle=False)
    bleu_pairs = valid_pairs[: cfg.valid_bleu_sentences]
    translator = Translator(model, tok, device)

    history: list[EpochResult] = []
    best_bleu = -1.0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        batches = train_data.batches(cfg.batch_tokens, shuffle=True, seed=cfg.seed * 1000 + epoch)
        epoch_start, tokens, loss_sum, loss_tokens = time.perf_counter(), 0, 0.0, 0
        report_every = max(1, len(batches) // 5)
        for step, batch in enumerate(batches, start=1):
            batch = batch.to(device)
            loss = batch_loss(model, batch, criterion, cfg.teacher_forcing)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {float(loss)} at epoch {epoch} step {step}; lower train.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            n_tgt = batch.n_tgt_tokens
            tokens += n_tgt + batch.n_src_tokens
            loss_sum += loss.item() * n_tgt
            loss_tokens += n_tgt
            if step % report_every == 0 or step == len(batches):
                elapsed = time.perf_counter() - epoch_start
                total_steps = cfg.epochs * len(batches)
                done_steps = (epoch - 1) * len(batches) + step
                eta = (time.perf_counter() - start) / done_steps * (total_steps - done_steps)
                log.info(
                    "epoch %d/%d  step %d/%d  loss %.3f  %.0f tok/s  elapsed %s  eta %s",
                    epoch,
                    cfg.epochs,
                    step,
                    len(batches),
                    loss_sum / loss_tokens,
                    tokens / elapsed,
                    _fmt_seconds(time.perf_counter() - start),
                    _fmt_seconds(eta),
                )
        seconds = time.perf_counter() - epoch_start
        valid_loss = validation_loss(model, valid_batches, device)
        hyps = translator.translate([s for s, _ in bleu_pairs], eval_cfg.model_copy(update={"beam_size": 1}))
        valid_bleu = score(hyps, [t for _, t in bleu_pairs], with_ter=False)["bleu"]
        result = EpochResult(
            epoch,
            round(loss_sum / loss_tokens, 4),
            round(valid_loss, 4),
            round(math.exp(min(valid_loss, 50)), 3),
            valid_bleu,
            round(tokens / seconds, 1),
            round(seconds, 1),
        )
        history.append(result)
        log.info(
            "epoch %d done: train loss %.3f  valid loss %.3f  valid BLEU %.2f  %.0f tok/s  %.0f s",
            epoch,
            result.train_loss,
            valid_loss,
            valid_bleu,
            result.tokens_per_second,
            seconds,
        )
        if valid_bleu >= best_bleu:
            best_bleu = valid_bleu
            checkpoint.save(out_dir / MODEL_FILE, model, model_cfg, {"epoch": epoch, "valid_bleu": valid_bleu})
        write_curve(curve_path, history)

    summary: dict[str, object] = {
        "epochs": cfg.epochs,
        "best_valid_bleu": best_bleu,
        "best_epoch": max(history, key=lambda r: (r.valid_bleu, r.epoch)).epoch,
        "train_pairs": len(train_data),
        "train_pairs_too_long": too_long,
        "parameters": model.num_parameters(),
        "train_seconds": round(time.perf_counter() - start, 1),
        "tokens_per_second": round(sum(r.tokens_per_second * r.seconds for r in history) / sum(r.seconds for r in history), 1),
        "device": str(device),
    }
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_curve(path: Path, history: list[EpochResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)
