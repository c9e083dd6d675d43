"""The training loop: token-bucketed batches, teacher forcing, per-epoch validation.

Writes the best checkpoint (by validation BLEU), a per-epoch CSV for `dvc
plots` and a JSON summary. Every `checkpoint_every` steps and at each epoch's
end it saves a resume state (model, optimizer, scheduler, RNG, progress) under
a key of its configs and data, outside DVC's outputs, so a killed run picks up
where it stopped and finishes as if never interrupted.

On many processes (`s2s.distributed`, launched by torchrun) every rank builds
the same global batches and trains on its own interleaved shard of each; the
loss is normalised by the global batch's token count, so the averaged update
is the one a single process would make on the whole batch. Rank 0 alone
validates and writes; its results and decisions reach the others by
broadcast. Knows nothing of DVC, Prefect or MLflow.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import random
import resource
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from s2s import allocator, checkpoint, distributed
from s2s.batching import Batch, ParallelData, bucket_indices
from s2s.config import EvaluateConfig, ModelConfig, TrainConfig
from s2s.errors import Interrupted, S2SError
from s2s.layout import MODEL_FILE, read_prepared
from s2s.metrics import METRICS, Metric
from s2s.models import Seq2Seq, build_model
from s2s.scoring import score
from s2s.tokenizer import PAD, Tokenizers
from s2s.translate import Translator, resolve_device

log = logging.getLogger(__name__)

CURVE_FIELDS = ("epoch", "train_loss", "valid_loss", "valid_ppl", "valid_bleu", "valid_score", "tokens_per_second", "seconds")


class TrainingError(S2SError, RuntimeError):
    pass


class Stopped(Interrupted):
    """Training stopped on request (SIGINT or SIGTERM) after saving its resume state."""

    def __init__(self, signum: int, epoch: int, step: int) -> None:
        super().__init__(signum, f"stopped at epoch {epoch}, step {step}; run again to resume")


_stop_signal = 0  # set by request_stop (a signal handler); checked after every update


def request_stop(signum: int, frame: object = None) -> None:
    """A signal handler: finish the current update, save the resume state, raise Stopped."""
    global _stop_signal
    _stop_signal = signum


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_ppl: float
    valid_bleu: float
    valid_score: float  # train.select_metric on the validation sentences (= valid_bleu when that is bleu)
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
    best_score: float | None = None  # train.select_metric of the kept checkpoint; None before the first validation
    best_bleu: float = -1.0  # that checkpoint's validation BLEU
    history: list[EpochResult] = field(default_factory=list)
    updates: int = 0  # optimizer steps of the whole run


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


def stop_early(scores: list[float], patience: int, direction: Metric = METRICS["bleu"]) -> bool:
    """Early stopping: the last `patience` epochs brought no validation score better than the best before them."""
    if not patience or len(scores) <= patience:
        return False
    return not direction.better(direction.best(scores[-patience:]), direction.best(scores[:-patience]))


def improves(score: float, best: float | None, direction: Metric) -> bool:
    """At least as good as the best so far (a tie keeps the later, longer-trained checkpoint)."""
    return best is None or direction.gain(score, best) >= 0


BUDGET_PROBE = 10  # updates timed before the time budget is checked against warm-up and the first epoch


def budget_warnings(
    max_minutes: float, elapsed: float, seconds_per_update: float, updates: int, warmup_steps: int, steps_per_epoch: int
) -> list[str]:
    """What a time budget cannot reach at the measured speed: the end of warm-up, the end of the first epoch."""
    if not max_minutes or seconds_per_update <= 0:
        return []
    reachable = updates + int((60 * max_minutes - elapsed) / seconds_per_update)
    speed = f"train.max_minutes={max_minutes:g} allows about {reachable} updates at the measured {seconds_per_update:.2f} s each"
    out = []
    if reachable < warmup_steps:
        out.append(f"{speed}, fewer than train.warmup_steps={warmup_steps}: the learning rate never reaches its peak "
                   "(lower warmup_steps or raise max_minutes)")  # fmt: skip
    if reachable < steps_per_epoch:
        out.append(f"{speed}, fewer than one epoch ({steps_per_epoch} updates): the model is validated only when the "
                   "budget runs out, on part of the data (raise max_minutes or lower batch_tokens)")  # fmt: skip
    return out


def split_batch(index: list[int], target_tokens: int, world: distributed.World, parts: int) -> list[tuple[list[int], float]]:
    """This rank's `parts` micro-batches of the global batch `index`, each with its loss weight.

    The weight is processes / the global batch's target tokens: gradients are averaged over processes, so the
    weighted loss sums add up to the global batch's mean loss. A part left empty (fewer sentences than processes
    x parts) trains a stand-in sentence at weight 0, which keeps the ranks' gradient all-reduces in step.
    """
    weight = world.world_size / target_tokens
    mine = distributed.shard(index, world.rank, world.world_size)
    micro = [distributed.shard(mine, k, parts) for k in range(parts)]
    return [(part, weight) if part else (index[:1], 0.0) for part in micro]


def make_adam(model: nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with the kernel train.adam_kernel asks for (auto: PyTorch's choice, a per-tensor loop on CPU)."""
    kernel = {"auto": {}, "loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.adam_kernel]
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, **kernel)


def resume_key(cfg: TrainConfig, model_cfg: ModelConfig, eval_cfg: EvaluateConfig, prepared: Path, tokenizer_dir: Path) -> str:
    """What a resume state belongs to: the same configs, data and tokenizer, nothing else.

    The process layout is left out: a run killed on N processes may continue on M (the update is the same).
    """
    configs = [cfg.model_dump(exclude={"distributed"}), model_cfg.model_dump(), eval_cfg.model_dump()]
    digest = hashlib.sha256(json.dumps(configs, sort_keys=True).encode())
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
        world: distributed.World | None = None,
    ) -> None:
        seed_everything(cfg.seed)
        self.world = world = world or distributed.World()
        self.cfg, self.model_cfg, self.eval_cfg = cfg, model_cfg, eval_cfg
        self.direction = METRICS[cfg.select_metric]
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and world.enabled:
            self.device = torch.device("cuda", world.local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif world.enabled and self.device.type == "cpu":  # ranks on one machine share its cores, not oversubscribe them
            torch.set_num_threads(max(1, distributed.cpu_count() // world.local_world_size))
        allocator.configure(cfg.malloc, self.device)
        self.tok = Tokenizers.load(tokenizer_dir)
        self.train_data, _, self.too_long = encode_split(self.tok, prepared, "train", cfg.max_tokens)
        valid_data, valid_pairs, _ = encode_split(self.tok, prepared, "valid", cfg.max_tokens)
        if len(self.train_data) == 0:
            raise TrainingError(f"no training pairs left: all {self.too_long} exceed train.max_tokens={cfg.max_tokens}")
        if self.too_long:
            log.warning("left out %d training pairs longer than train.max_tokens=%d subwords", self.too_long, cfg.max_tokens)
        self.model = build_model(model_cfg, self.tok.src.get_piece_size(), self.tok.tgt.get_piece_size()).to(self.device)
        log.info("model: %s, %.2fM parameters, device %s", model_cfg.arch, self.model.num_parameters() / 1e6, self.device)
        if world.rank:  # the same initial weights on every rank, but each its own dropout masks
            torch.manual_seed(cfg.seed * 1000 + world.rank)
        self.progress = Progress()
        self.clock = time.perf_counter()  # training started at this perf_counter() reading (moved back on resume)
        self.shared_elapsed = 0.0  # rank 0's elapsed() at the last step: what every rank's budget and schedule go by
        self.resumed_at_update = 0
        self.probe: list[float] = []  # elapsed seconds after each of the first updates, for check_budget
        self.stop_signal = 0
        self.steps_per_epoch = self.train_data.count_batches(cfg.batch_tokens)
        self.optimizer = make_adam(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step + 1, cfg.warmup_steps, cfg.lr_schedule, self.run_fraction())
        )
        # Summed, then divided by the global batch's token count: the same normalisation on 1 or N processes.
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=cfg.label_smoothing, reduction="sum")
        self.valid_batches = valid_data.batches(cfg.batch_tokens, shuffle=False)
        self.bleu_pairs = valid_pairs[: cfg.valid_bleu_sentences]
        self.translator = Translator(self.model, self.tok, self.device)
        # bf16 autocast is a GPU feature; on CPU (oneDNN's LSTM has no bf16 kernel) training stays float32.
        self.amp = cfg.amp == "bf16" and self.device.type == "cuda"
        if cfg.amp == "bf16" and not self.amp:
            log.warning("train.amp=bf16 applies to CUDA only; training in float32 on %s", self.device)
        # DDP averages gradients across ranks while backward runs; buffers (position tables) never change, so no
        # broadcast of them. The compiled module only runs the training forward pass; saving and decoding use the plain one.
        self.ddp = DistributedDataParallel(self.model, forward_sync_buffers=False) if world.enabled else None
        forward_model = self.ddp or self.model
        self.forward_model = torch.compile(forward_model, dynamic=True) if cfg.compile else forward_model
        self.recent: list[dict[str, torch.Tensor]] = []  # last epochs' weights, for averaging
        self.average: dict[str, Any] | None = None  # the averaged weights' epochs, valid score and whether they were kept
        self.resume_path = self.best_path = None
        if resume_dir is not None:
            key = resume_key(cfg, model_cfg, eval_cfg, prepared, tokenizer_dir)
            self.resume_path, self.best_path = resume_dir / f"{key}.pt", resume_dir / f"{key}-best.pt"

    # ------------------------------------------------------------------ resume state

    def save_state(self) -> None:
        """Save the resume state (rank 0 writes; every rank calls this, as it gathers each rank's RNG state)."""
        if self.resume_path is None:
            return
        rng = self.world.gather(
            {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": list(random.getstate()[1]),
            }
        )
        if not self.world.is_main:
            return
        p = self.progress
        p.seconds = self.elapsed()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "progress": {**asdict(p), "history": [asdict(h) for h in p.history]},
        }
        checkpoint.atomic_torch_save(state, self.resume_path)

    def read_state(self) -> dict[str, object] | None:
        if self.resume_path is None or not self.resume_path.is_file():
            return None
        try:
            state = torch.load(self.resume_path, map_location="cpu", weights_only=True)
            for key in ("model", "optimizer", "scheduler", "rng", "progress"):
                state[key]
        except (RuntimeError, OSError, EOFError, KeyError, ValueError, TypeError) as err:
            log.warning("ignoring unreadable resume state %s: %s", self.resume_path, err)
            return None
        return state

    def load_state(self) -> bool:
        """Continue from the resume state rank 0 reads; every rank gets the same one."""
        state = self.world.broadcast(self.read_state() if self.world.is_main else None)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        progress = dict(state["progress"])
        progress["history"] = [EpochResult(**h) for h in progress["history"]]
        self.progress = Progress(**progress)
        rank = self.world.rank
        if rank < len(state["rng"]):
            rng = state["rng"][rank]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            random.setstate((3, tuple(rng["python"]), None))
        else:  # saved by a run on fewer processes: a fresh stream for this rank, still reproducible
            seed_everything(self.cfg.seed * 1000 + rank + 7919 * self.progress.step)
        log.info("resuming from %s: epoch %d, step %d", self.resume_path, self.progress.epoch, self.progress.step)
        return True

    # --------------------------------------------------------------------- training

    def train_step(self, index: list[int], epoch: int, step: int) -> None:
        """One update on the global batch `index` (sentence positions in the training data)."""
        cfg, p, world = self.cfg, self.progress, self.world
        self.optimizer.zero_grad(set_to_none=True)
        n_tgt = self.train_data.target_tokens(index)  # of the global batch: every rank knows it without communicating
        micro = split_batch(index, n_tgt, world, cfg.accumulate)
        loss_sum = torch.zeros((), device=self.device)
        for k, (part, weight) in enumerate(micro):
            batch = self.train_data.batch(part).to(self.device)
            # Gradients are all-reduced after the last micro-batch only.
            sync = self.ddp.no_sync() if self.ddp is not None and k < len(micro) - 1 else contextlib.nullcontext()
            try:
                with sync:
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                        loss = batch_loss(self.forward_model, batch, self.criterion, cfg.teacher_forcing)
                    (loss * weight).backward()
            except torch.cuda.OutOfMemoryError:
                raise TrainingError(
                    f"CUDA out of memory at epoch {epoch} step {step} (a micro-batch of "
                    f"{batch.src.numel() + batch.tgt_in.numel()} padded tokens): lower train.batch_tokens "
                    f"(now {cfg.batch_tokens}) or raise train.accumulate (now {cfg.accumulate})"
                ) from None
            if weight:
                loss_sum += loss.detach().float()
        # One small all-reduce: the global loss (so every rank sees a NaN and stops at the same step), rank 0's clock
        # (so every rank's time budget and learning-rate schedule agree) and any rank's stop request (all stop).
        elapsed = self.elapsed() if world.is_main else 0.0
        total, self.shared_elapsed, stop = world.sum([float(loss_sum), elapsed, float(_stop_signal)], self.device)
        self.stop_signal = _stop_signal or (int(signal.SIGTERM) if stop else 0)  # another rank was asked to stop
        if not math.isfinite(total):
            raise TrainingError(f"loss is {total} at epoch {epoch} step {step}; lower train.lr or check the data")
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.scheduler.step()
        p.tokens += n_tgt + self.train_data.source_tokens(index)
        p.loss_sum += total
        p.loss_tokens += n_tgt
        p.updates += 1

    def validate(self, epoch: int, seconds: float) -> EpochResult:
        p = self.progress
        valid_loss = validation_loss(self.model, self.valid_batches, self.device)
        valid_bleu, valid_score = self.valid_scores()
        result = EpochResult(
            epoch,
            round(p.loss_sum / max(p.loss_tokens, 1), 4),
            round(valid_loss, 4),
            round(math.exp(min(valid_loss, 50)), 3),
            valid_bleu,
            valid_score,
            round(p.tokens / max(seconds, 1e-9), 1),
            round(seconds, 1),
        )
        chosen = "" if self.cfg.select_metric == "bleu" else f"  valid {self.cfg.select_metric} {valid_score:.2f}"
        log.info(
            "epoch %d done: train loss %.3f  valid loss %.3f  valid BLEU %.2f%s  %.0f tok/s  %.0f s",
            epoch, result.train_loss, valid_loss, valid_bleu, chosen, result.tokens_per_second, seconds,
        )  # fmt: skip
        return result

    def valid_scores(self) -> tuple[float, float]:
        """Greedy decoding of the validation sentences: their BLEU and their train.select_metric."""
        hyps = self.translator.translate([s for s, _ in self.bleu_pairs], self.eval_cfg.model_copy(update={"beam_size": 1}))
        scores = score(hyps, [t for _, t in self.bleu_pairs], metrics=("bleu", self.cfg.select_metric))
        return scores["bleu"], scores[self.cfg.select_metric]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch` (sentence positions): the same on every rank, new for every epoch."""
        return bucket_indices(self.train_data.lengths(), self.cfg.batch_tokens, shuffle=True, seed=self.cfg.seed * 1000 + epoch)

    def fit(self, out_dir: Path, curve_path: Path, summary_path: Path) -> dict[str, object]:
        cfg, world = self.cfg, self.world
        resumed = self.load_state()
        self.resumed_at_update = self.progress.updates if resumed else 0
        if resumed and world.is_main and self.best_path is not None and self.best_path.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.best_path, out_dir / MODEL_FILE)
        self.clock = time.perf_counter() - self.progress.seconds  # the budget counts time before a resume too
        self.shared_elapsed = self.progress.seconds
        while self.progress.epoch <= cfg.epochs:
            p, epoch = self.progress, self.progress.epoch
            self.model.train()
            batches = self.epoch_batches(epoch)
            report_every = max(1, len(batches) // 5)
            epoch_start = time.perf_counter() - p.epoch_seconds
            for step in range(p.step + 1, len(batches) + 1):
                self.train_step(batches[step - 1], epoch, step)
                p.step = step
                self.check_budget()
                if self.stop_signal:
                    p.epoch_seconds = time.perf_counter() - epoch_start
                    self.save_state()
                    raise Stopped(self.stop_signal, epoch, step)
                if self.out_of_time(self.agreed_elapsed()):
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
            # Rank 0 validates and writes; the others wait for its result, so every rank keeps the same history.
            with self.all_local_cores():
                result = self.validate(epoch, time.perf_counter() - epoch_start) if world.is_main else None
            result = world.broadcast(result)
            p.history.append(result)
            if improves(result.valid_score, p.best_score, self.direction):
                p.best_score, p.best_bleu = result.valid_score, result.valid_bleu
                if world.is_main:
                    scores = {"valid_bleu": result.valid_bleu, "valid_score": result.valid_score}
                    self.save_checkpoint(out_dir, {"epoch": epoch, **scores})
                    if self.best_path is not None:  # DVC clears out_dir before a re-run; a resumed run needs this copy
                        self.best_path.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(out_dir / MODEL_FILE, self.best_path)
            if world.is_main:
                write_curve(curve_path, p.history)
                self.remember_weights()
            self.progress = Progress(epoch=epoch + 1, best_score=p.best_score, best_bleu=p.best_bleu, history=p.history,
                                     updates=p.updates)  # fmt: skip
            if world.broadcast(self.out_of_time(self.elapsed()) or self.patience_exhausted()):  # rank 0 decides
                break
            if epoch < cfg.epochs:
                self.save_state()
                signum = world.broadcast(_stop_signal)  # asked to stop during validation: the state is saved, stop now
                if signum:
                    raise Stopped(signum, epoch + 1, 0)
        if world.is_main:
            self.try_average(out_dir)
        return self.finish(summary_path)

    @contextlib.contextmanager
    def all_local_cores(self) -> Iterator[None]:
        """On CPU, rank 0 validates with the whole machine's threads: the other ranks only wait meanwhile."""
        threads = torch.get_num_threads()
        if self.world.is_main and self.world.enabled and self.device.type == "cpu" and not self.cfg.threads:
            torch.set_num_threads(distributed.cpu_count())
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def save_checkpoint(self, out_dir: Path, extra: dict[str, object]) -> None:
        """The model with its config, and the training config that made it (the registry logs what trained)."""
        extra = {**extra, "train_config": self.cfg.model_dump(mode="json")}
        checkpoint.save(out_dir / MODEL_FILE, self.model, self.model_cfg, extra)

    def elapsed(self) -> float:
        """Seconds of training so far, across resumes."""
        return time.perf_counter() - self.clock

    def check_budget(self) -> None:
        """Once, after the first BUDGET_PROBE updates of this process: warn of a budget too short for the run."""
        self.probe.append(self.agreed_elapsed())
        if len(self.probe) != BUDGET_PROBE + 1 or not self.world.is_main:
            return
        per_update = (self.probe[-1] - self.probe[0]) / BUDGET_PROBE
        cfg = self.cfg
        for warning in budget_warnings(
            cfg.max_minutes, self.probe[-1], per_update, self.progress.updates, cfg.warmup_steps, self.steps_per_epoch
        ):
            log.warning(warning)

    def agreed_elapsed(self) -> float:
        """Training seconds that every rank agrees on: this clock on one process, rank 0's at the last step on many."""
        return self.shared_elapsed if self.world.enabled else self.elapsed()

    def run_fraction(self) -> float:
        """How much of the run is done: steps over `epochs` epochs, or the time budget if that is further along."""
        p = self.progress
        fraction = ((p.epoch - 1) * self.steps_per_epoch + p.step) / (self.cfg.epochs * self.steps_per_epoch)
        if self.cfg.max_minutes:
            fraction = max(fraction, self.agreed_elapsed() / (60 * self.cfg.max_minutes))
        return min(fraction, 1.0)

    def out_of_time(self, elapsed: float) -> bool:
        return bool(self.cfg.max_minutes) and elapsed > 60 * self.cfg.max_minutes

    def patience_exhausted(self) -> bool:
        if stop_early([r.valid_score for r in self.progress.history], self.cfg.patience, self.direction):
            log.info("no better validation %s for %d epochs: stopping early", self.cfg.select_metric, self.cfg.patience)
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
        bleu, value = self.valid_scores()
        p, name = self.progress, self.cfg.select_metric
        kept = p.best_score is None or self.direction.better(value, p.best_score)
        epochs = [r.epoch for r in p.history[-len(self.recent) :]]
        self.average = {"epochs": epochs, "valid_score": value, "kept": kept}
        log.info("average of epochs %d-%d: valid %s %.2f, best epoch %.2f: %s kept", epochs[0], epochs[-1], name, value,
                 p.best_score, "the average is" if kept else "the best epoch's weights are")  # fmt: skip
        if kept:
            p.best_score, p.best_bleu = value, bleu
            self.save_checkpoint(out_dir, {"averaged_epochs": len(self.recent), "valid_bleu": bleu, "valid_score": value})

    def finish(self, summary_path: Path) -> dict[str, object]:
        history, processes = self.progress.history, self.world.world_size
        best = self.direction.best(r.valid_score for r in history)
        best_epoch = max(r.epoch for r in history if r.valid_score == best)  # the latest of tied epochs
        tokens_per_second = mean_tokens_per_second(history)
        average = self.average
        kept = f"average of epochs {average['epochs'][0]}-{average['epochs'][-1]}" if average and average["kept"] else \
            f"epoch {best_epoch}"  # fmt: skip
        summary: dict[str, object] = {
            "epochs": len(history),
            "select_metric": self.cfg.select_metric,
            "best_valid_score": self.progress.best_score,  # of the kept checkpoint
            "best_valid_bleu": self.progress.best_bleu,
            "best_epoch": best_epoch,  # the best single epoch
            "kept": kept,  # whose weights artifacts/model holds
            "average_valid_score": average["valid_score"] if average else None,  # train.average_last's, kept or not
            "updates": self.progress.updates,
            "resumed_at_update": self.resumed_at_update,  # 0: trained in one go
            "train_pairs": len(self.train_data),
            "train_pairs_too_long": self.too_long,
            "parameters": self.model.num_parameters(),
            "train_seconds": round(sum(r.seconds for r in history), 1),
            "tokens_per_second": round(tokens_per_second, 1),  # all processes together
            "processes": processes,
            "tokens_per_second_per_process": round(tokens_per_second / processes, 1),
            "device": str(self.device),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),  # rank 0's
        }
        if not self.world.is_main:
            return summary
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
    world: distributed.World | None = None,
) -> dict[str, object]:
    """Train, validate every epoch, keep the best checkpoint; resumes a killed run from `resume_dir`."""
    trainer = Trainer(cfg, model_cfg, eval_cfg, prepared, tokenizer_dir, resume_dir, world)
    return trainer.fit(out_dir, curve_path, summary_path)


def write_curve(path: Path, history: list[EpochResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)
