"""The training loop: token-bucketed batches, teacher forcing, per-epoch validation.

Writes the best checkpoint (by validation BLEU), a per-epoch CSV for `dvc
plots` and a JSON summary. Every `checkpoint_every` steps and at each epoch's
end it saves a resume state (model, optimizer, scheduler, RNG, progress) under
a key of its configs and data, outside DVC's outputs, so a killed run picks up
where it stopped and finishes as if never interrupted. Knows nothing of DVC,
Prefect or MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from s2s import checkpoint
from s2s.batching import Batch, ParallelData
from s2s.config import EvaluateConfig, ModelConfig, TrainConfig
from s2s.errors import S2SError
from s2s.layout import MODEL_FILE, read_prepared
from s2s.models import Seq2Seq, build_model
from s2s.scoring import score
from s2s.tokenizer import PAD, Tokenizers
from s2s.translate import Translator, resolve_device

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


def lr_factor(step: int, warmup: int, schedule: str, fraction: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then constant, decaying as 1/sqrt(step), or cosine.

    `fraction` is how much of the run is done (0..1); the cosine schedule reaches 0 at 1.
    """
    step = max(step, 1)
    if warmup and step < warmup:
        return step / warmup
    if schedule == "inverse_sqrt":
        return (max(warmup, 1) / step) ** 0.5
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return 1.0


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    """Where training stands; saved with the resume state so a killed run continues exactly."""

    epoch: int = 1  # the epoch in progress
    step: int = 0  # batches of that epoch already trained
    tokens: int = 0
    loss_sum: float = 0.0
    loss_tokens: int = 0
    epoch_seconds: float = 0.0
    seconds: float = 0.0  # training wall time before the last resume state was saved
    best_bleu: float = -1.0
    history: list[EpochResult] = field(default_factory=list)


def mean_tokens_per_second(history: list[EpochResult]) -> float:
    """Throughput over all epochs, each weighted by its duration (an epoch cut short by the budget counts less)."""
    seconds = sum(r.seconds for r in history)
    if seconds <= 0:  # a budget that ran out within the first step: no meaningful duration
        return history[-1].tokens_per_second if history else 0.0
    return sum(r.tokens_per_second * r.seconds for r in history) / seconds


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by PyTorch, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def stop_early(valid_bleu: list[float], patience: int) -> bool:
    """Early stopping: the last `patience` epochs brought no validation BLEU above the best before them."""
    if not patience or len(valid_bleu) <= patience:
        return False
    return max(valid_bleu[-patience:]) <= max(valid_bleu[:-patience])


def resume_key(cfg: TrainConfig, model_cfg: ModelConfig, eval_cfg: EvaluateConfig, prepared: Path, tokenizer_dir: Path) -> str:
    """What a resume state belongs to: the same configs, data and tokenizer, nothing else."""
    digest = hashlib.sha256(
        json.dumps([cfg.model_dump(), model_cfg.model_dump(), eval_cfg.model_dump()], sort_keys=True).encode()
    )
    for path in sorted([*prepared.glob("train.*"), *prepared.glob("valid.*"), *tokenizer_dir.glob("*")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:24]


class Trainer:
    """One training run; `fit()` resumes from `resume_dir` when a matching state is there."""

    def __init__(
        self,
        cfg: TrainConfig,
        model_cfg: ModelConfig,
        eval_cfg: EvaluateConfig,
        prepared: Path,
        tokenizer_dir: Path,
        resume_dir: Path | None = None,
    ) -> None:
        seed_everything(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.model_cfg, self.eval_cfg = cfg, model_cfg, eval_cfg
        self.device = resolve_device(cfg.device)
        self.tok = Tokenizers.load(tokenizer_dir)
        self.train_data, _, self.too_long = encode_split(self.tok, prepared, "train", cfg.max_tokens)
        valid_data, valid_pairs, _ = encode_split(self.tok, prepared, "valid", cfg.max_tokens)
        if len(self.train_data) == 0:
            raise TrainingError(f"no training pairs left: all {self.too_long} exceed train.max_tokens={cfg.max_tokens}")
        if self.too_long:
            log.warning("left out %d training pairs longer than train.max_tokens=%d subwords", self.too_long, cfg.max_tokens)
        self.model = build_model(model_cfg, self.tok.src.get_piece_size(), self.tok.tgt.get_piece_size()).to(self.device)
        log.info("model: %s, %.2fM parameters, device %s", model_cfg.arch, self.model.num_parameters() / 1e6, self.device)
        self.progress = Progress()
        self.clock = time.perf_counter()  # training started at this perf_counter() reading (moved back on resume)
        self.steps_per_epoch = self.train_data.count_batches(cfg.batch_tokens)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step + 1, cfg.warmup_steps, cfg.lr_schedule, self.run_fraction())
        )
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=cfg.label_smoothing)
        self.valid_batches = valid_data.batches(cfg.batch_tokens, shuffle=False)
        self.bleu_pairs = valid_pairs[: cfg.valid_bleu_sentences]
        self.translator = Translator(self.model, self.tok, self.device)
        # bf16 autocast is a GPU feature; on CPU (oneDNN's LSTM has no bf16 kernel) training stays float32.
        self.amp = cfg.amp == "bf16" and self.device.type == "cuda"
        if cfg.amp == "bf16" and not self.amp:
            log.warning("train.amp=bf16 applies to CUDA only; training in float32 on %s", self.device)
        # The compiled module only runs the training forward pass; saving and decoding use the plain one.
        self.forward_model = torch.compile(self.model, dynamic=True) if cfg.compile else self.model
        self.recent: list[dict[str, torch.Tensor]] = []  # last epochs' weights, for averaging
        self.resume_path = self.best_path = None
        if resume_dir is not None:
            key = resume_key(cfg, model_cfg, eval_cfg, prepared, tokenizer_dir)
            self.resume_path, self.best_path = resume_dir / f"{key}.pt", resume_dir / f"{key}-best.pt"

    # ------------------------------------------------------------------ resume state

    def save_state(self) -> None:
        if self.resume_path is None:
            return
        p = self.progress
        p.seconds = self.elapsed()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": list(random.getstate()[1]),
            "progress": {**asdict(p), "history": [asdict(h) for h in p.history]},
        }
        checkpoint.atomic_torch_save(state, self.resume_path)

    def load_state(self) -> bool:
        if self.resume_path is None or not self.resume_path.is_file():
            return False
        try:
            state = torch.load(self.resume_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
            log.warning("ignoring unreadable resume state %s: %s", self.resume_path, err)
            return False
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        progress = dict(state["progress"])
        progress["history"] = [EpochResult(**h) for h in progress["history"]]
        self.progress = Progress(**progress)
        log.info("resuming from %s: epoch %d, step %d", self.resume_path, self.progress.epoch, self.progress.step)
        return True

    # --------------------------------------------------------------------- training

    def train_step(self, batch: Batch, epoch: int, step: int) -> None:
        cfg, p = self.cfg, self.progress
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = batch_loss(self.forward_model, batch, self.criterion, cfg.teacher_forcing)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower train.lr or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"CUDA out of memory at epoch {epoch} step {step} (a batch of {batch.src.numel() + batch.tgt_in.numel()} "
                f"padded tokens): lower train.batch_tokens (now {cfg.batch_tokens})"
            ) from None
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.scheduler.step()
        n_tgt = batch.n_tgt_tokens
        p.tokens += n_tgt + batch.n_src_tokens
        p.loss_sum += loss.item() * n_tgt
        p.loss_tokens += n_tgt

    def validate(self, epoch: int, seconds: float) -> EpochResult:
        p = self.progress
        valid_loss = validation_loss(self.model, self.valid_batches, self.device)
        hyps = self.translator.translate([s for s, _ in self.bleu_pairs], self.eval_cfg.model_copy(update={"beam_size": 1}))
        valid_bleu = score(hyps, [t for _, t in self.bleu_pairs], with_ter=False)["bleu"]
        result = EpochResult(
            epoch,
            round(p.loss_sum / max(p.loss_tokens, 1), 4),
            round(valid_loss, 4),
            round(math.exp(min(valid_loss, 50)), 3),
            valid_bleu,
            round(p.tokens / max(seconds, 1e-9), 1),
            round(seconds, 1),
        )
        log.info(
            "epoch %d done: train loss %.3f  valid loss %.3f  valid BLEU %.2f  %.0f tok/s  %.0f s",
            epoch, result.train_loss, valid_loss, valid_bleu, result.tokens_per_second, seconds,
        )  # fmt: skip
        return result

    def fit(self, out_dir: Path, curve_path: Path, summary_path: Path) -> dict[str, object]:
        cfg = self.cfg
        if self.load_state() and self.best_path is not None and self.best_path.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.best_path, out_dir / MODEL_FILE)
        self.clock = time.perf_counter() - self.progress.seconds  # the budget counts time before a resume too
        while self.progress.epoch <= cfg.epochs:
            p, epoch = self.progress, self.progress.epoch
            self.model.train()
            batches = self.train_data.batches(cfg.batch_tokens, shuffle=True, seed=cfg.seed * 1000 + epoch)
            report_every = max(1, len(batches) // 5)
            epoch_start = time.perf_counter() - p.epoch_seconds
            for step in range(p.step + 1, len(batches) + 1):
                self.train_step(batches[step - 1].to(self.device), epoch, step)
                p.step = step
                if self.out_of_time():
                    log.info(
                        "train.max_minutes=%g reached at epoch %d step %d: validating and stopping", cfg.max_minutes, epoch, step
                    )
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < len(batches):
                    p.epoch_seconds = time.perf_counter() - epoch_start
                    self.save_state()
                if step % report_every == 0 or step == len(batches):
                    fraction, elapsed = self.run_fraction(), self.elapsed()
                    log.info(
                        "epoch %d/%d  step %d/%d  loss %.3f  lr %.2e  %.0f tok/s  elapsed %s  eta %s",
                        epoch, cfg.epochs, step, len(batches), p.loss_sum / p.loss_tokens, self.scheduler.get_last_lr()[0],
                        p.tokens / (time.perf_counter() - epoch_start), _fmt_seconds(elapsed),
                        _fmt_seconds(elapsed * (1 - fraction) / max(fraction, 1e-9)),
                    )  # fmt: skip
            result = self.validate(epoch, time.perf_counter() - epoch_start)
            p.history.append(result)
            if result.valid_bleu >= p.best_bleu:
                p.best_bleu = result.valid_bleu
                self.save_checkpoint(out_dir, {"epoch": epoch, "valid_bleu": result.valid_bleu})
                if self.best_path is not None:  # DVC clears out_dir before a re-run; a resumed run needs this copy
                    self.best_path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out_dir / MODEL_FILE, self.best_path)
            write_curve(curve_path, p.history)
            self.remember_weights()
            self.progress = Progress(epoch=epoch + 1, best_bleu=p.best_bleu, history=p.history)
            if self.out_of_time() or self.patience_exhausted():
                break
            if epoch < cfg.epochs:
                self.save_state()
        self.try_average(out_dir)
        return self.finish(summary_path)

    def save_checkpoint(self, out_dir: Path, extra: dict[str, object]) -> None:
        """The model with its config, and the training config that made it (the registry logs what trained)."""
        extra = {**extra, "train_config": self.cfg.model_dump(mode="json")}
        checkpoint.save(out_dir / MODEL_FILE, self.model, self.model_cfg, extra)

    def elapsed(self) -> float:
        """Seconds of training so far, across resumes."""
        return time.perf_counter() - self.clock

    def run_fraction(self) -> float:
        """How much of the run is done: steps over `epochs` epochs, or the time budget if that is further along."""
        p = self.progress
        fraction = ((p.epoch - 1) * self.steps_per_epoch + p.step) / (self.cfg.epochs * self.steps_per_epoch)
        if self.cfg.max_minutes:
            fraction = max(fraction, self.elapsed() / (60 * self.cfg.max_minutes))
        return min(fraction, 1.0)

    def out_of_time(self) -> bool:
        return bool(self.cfg.max_minutes) and self.elapsed() > 60 * self.cfg.max_minutes

    def patience_exhausted(self) -> bool:
        if stop_early([r.valid_bleu for r in self.progress.history], self.cfg.patience):
            log.info("no better validation BLEU for %d epochs: stopping early", self.cfg.patience)
            return True
        return False

    def remember_weights(self) -> None:
        if self.cfg.average_last:
            self.recent = [*self.recent, {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}]
            self.recent = self.recent[-self.cfg.average_last :]

    def try_average(self, out_dir: Path) -> None:
        """Average the last epochs' weights; keep the average only if it validates better than the best epoch."""
        if len(self.recent) < 2:
            return
        averaged = {k: sum(sd[k].float() for sd in self.recent) / len(self.recent) for k in self.recent[0]}
        self.model.load_state_dict({k: v.to(self.recent[-1][k].dtype) for k, v in averaged.items()})
        hyps = self.translator.translate([s for s, _ in self.bleu_pairs], self.eval_cfg.model_copy(update={"beam_size": 1}))
        bleu = score(hyps, [t for _, t in self.bleu_pairs], with_ter=False)["bleu"]
        log.info(
            "average of the last %d epochs: valid BLEU %.2f (best single epoch %.2f)",
            len(self.recent),
            bleu,
            self.progress.best_bleu,
        )
        if bleu > self.progress.best_bleu:
            self.progress.best_bleu = bleu
            self.save_checkpoint(out_dir, {"averaged_epochs": len(self.recent), "valid_bleu": bleu})

    def finish(self, summary_path: Path) -> dict[str, object]:
        history = self.progress.history
        summary: dict[str, object] = {
            "epochs": len(history),
            "best_valid_bleu": self.progress.best_bleu,
            "best_epoch": max(history, key=lambda r: (r.valid_bleu, r.epoch)).epoch,
            "train_pairs": len(self.train_data),
            "train_pairs_too_long": self.too_long,
            "parameters": self.model.num_parameters(),
            "train_seconds": round(sum(r.seconds for r in history), 1),
            "tokens_per_second": round(mean_tokens_per_second(history), 1),
            "device": str(self.device),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
        }
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        for path in (self.resume_path, self.best_path):
            if path is not None:
                checkpoint.remove_with_partials(path)  # finished: nothing to resume, not even a save a kill cut short
        return summary


def train(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    eval_cfg: EvaluateConfig,
    prepared: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    curve_path: Path,
    summary_path: Path,
    resume_dir: Path | None = None,
) -> dict[str, object]:
    """Train, validate every epoch, keep the best checkpoint; resumes a killed run from `resume_dir`."""
    return Trainer(cfg, model_cfg, eval_cfg, prepared, tokenizer_dir, resume_dir).fit(out_dir, curve_path, summary_path)


def write_curve(path: Path, history: list[EpochResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)
