"""The training loop: token-bucketed batches, teacher forcing, per-epoch validation.

Writes the kept checkpoint (by validation `train.select_metric`; s2s.selection decides), the training curve
(s2s.curve) and a summary (`TrainSummary`). Every `checkpoint_every` steps and at each epoch's end it saves a
resume state (s2s.train_state, under s2s.checkpoint's key of its configs and data, outside DVC's outputs), so a
killed run picks up where it stopped and finishes as if never interrupted. s2s.budget owns the time budget.

On many processes (`s2s.distributed`, launched by torchrun) every rank builds the same global batches and
trains on its own interleaved shard of each; the loss is normalised by the global batch's token count, so the
averaged update is the one a single process would make on the whole batch. Rank 0 alone validates and writes;
its results and decisions reach the others by broadcast. Knows nothing of DVC, Prefect or MLflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import resource
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from s2s import allocator, checkpoint, distributed, machine, precision, selection
from s2s.batching import Batch, Indices, ParallelData, TrainingData, bucket_indices
from s2s.budget import Budget
from s2s.config import EvaluateConfig, ModelConfig, TrainConfig
from s2s.errors import Interrupted, S2SError
from s2s.layout import MODEL_FILE
from s2s.metrics import METRICS
from s2s.models import Seq2Seq, build_model
from s2s.scoring import score
from s2s.tokenizer import PAD, Tokenizers
from s2s.train_records import EpochResult, TrainSummary, write_curve
from s2s.train_state import TrainState, rng_state, seed_everything, set_rng_state
from s2s.translate import Translator, resolve_device

log = logging.getLogger(__name__)


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


def batch_loss(model: Seq2Seq, batch: Batch, criterion: nn.Module, teacher_forcing: float) -> torch.Tensor:
    out = model(batch.src, batch.src_len, batch.tgt_in, teacher_forcing)
    loss: torch.Tensor = criterion(out.logits.reshape(-1, out.logits.size(-1)).float(), batch.tgt_out.reshape(-1))
    return loss


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
        return float((max(warmup, 1) / step) ** 0.5)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return 1.0


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


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


def split_batch(
    positions: list[int] | Indices, target_tokens: int, world: distributed.World, parts: int
) -> list[tuple[list[int], float]]:
    """This rank's `parts` micro-batches of the global batch at `positions`, each with its loss weight.

    The weight is processes / the global batch's target tokens: gradients are averaged over processes, so the
    weighted loss sums add up to the global batch's mean loss. A part left empty (fewer sentences than processes
    x parts) trains a stand-in sentence at weight 0, which keeps the ranks' gradient all-reduces in step.
    """
    weight = world.world_size / target_tokens
    index: list[int] = np.asarray(positions).tolist()  # a batch's few dozen positions, sharded as a list
    mine = distributed.shard(index, world.rank, world.world_size)
    micro = [distributed.shard(mine, k, parts) for k in range(parts)]
    return [(part, weight) if part else (index[:1], 0.0) for part in micro]


T = TypeVar("T")
U = TypeVar("U")
# A global batch's target tokens, and this rank's micro-batches of it (on the CPU) with their loss weights.
MicroBatches = tuple[int, list[tuple[Batch, float]]]


def micro_batches(data: ParallelData, index: list[int] | Indices, world: distributed.World, parts: int) -> MicroBatches:
    n_tgt = data.target_tokens(index)  # of the global batch: every rank knows it without communicating
    return n_tgt, [(data.batch(part), weight) for part, weight in split_batch(index, n_tgt, world, parts)]


def built_ahead(build: Callable[[T], U], items: Sequence[T]) -> Iterator[U]:
    """`build(item)` for each item in order, each built in a background thread while the caller uses the one
    before, so a batch's gather and padding can overlap the step before it (PyTorch's kernels release the GIL). On
    2 CPU cores that is ~0.4 ms of a ~1 s step; the gain is not measured, and matters where steps are short (GPU)."""
    with ThreadPoolExecutor(1, thread_name_prefix="s2s-batches") as pool:
        upcoming = pool.submit(build, items[0]) if items else None
        for k in range(len(items)):
            assert upcoming is not None
            current = upcoming.result()
            upcoming = pool.submit(build, items[k + 1]) if k + 1 < len(items) else None
            yield current


def make_adam(model: nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with the kernel train.adam_kernel asks for (auto: PyTorch's choice, a per-tensor loop on CPU)."""
    kernel = {"auto": {}, "loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.adam_kernel]
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, **kernel)


def setup_device(cfg: TrainConfig, world: distributed.World) -> torch.device:
    """The device this process trains on, its thread count and allocator."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.enabled:
        device = torch.device("cuda", world.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif world.enabled and device.type == "cpu":  # ranks on one machine share its cores, not oversubscribe them
        torch.set_num_threads(max(1, machine.cpu_count() // world.local_world_size))
    allocator.configure(cfg.malloc, device)
    return device


def training_forward(
    model: Seq2Seq, cfg: TrainConfig, world: distributed.World
) -> tuple[DistributedDataParallel | None, nn.Module]:
    """The DDP wrapper (on many processes) and the module the training forward pass runs, compiled if asked.

    DDP averages gradients across ranks while backward runs; buffers (position tables) never change, so no broadcast
    of them. The compiled module only runs the training forward pass; saving and decoding use the plain one.
    """
    ddp = DistributedDataParallel(model, forward_sync_buffers=False) if world.enabled else None
    forward: nn.Module = ddp or model
    return ddp, torch.compile(forward, dynamic=True) if cfg.compile else forward  # type: ignore[return-value]  # compile returns a callable Module


def patience_exhausted(state: TrainState, cfg: TrainConfig) -> bool:
    """Rank 0's decision (the others get it by broadcast): stop early, `train.patience` epochs without progress."""
    if selection.stop_early([r.valid_score for r in state.history], cfg.patience, METRICS[cfg.select_metric]):
        log.info("no better validation %s for %d epochs: stopping early", cfg.select_metric, cfg.patience)
        return True
    return False


def out_of_memory(epoch: int, step: int, batch: Batch, cfg: TrainConfig) -> TrainingError:
    return TrainingError(
        f"CUDA out of memory at epoch {epoch} step {step} (a micro-batch of {batch.src.numel() + batch.tgt_in.numel()} "
        f"padded tokens): lower train.batch_tokens (now {cfg.batch_tokens}) or raise train.accumulate (now {cfg.accumulate})"
    )


def log_progress(
    epoch: int,
    epochs: int,
    step: int,
    steps: int,
    s: TrainState,
    lr: float,
    epoch_seconds: float,
    elapsed: float,
    fraction: float,
) -> None:
    log.info(
        "epoch %d/%d  step %d/%d  loss %.3f  lr %.2e  %.0f tok/s  elapsed %s  eta %s",
        epoch, epochs, step, steps, s.loss_sum / s.loss_tokens, lr, s.tokens / epoch_seconds, _fmt_seconds(elapsed),
        _fmt_seconds(elapsed * (1 - fraction) / max(fraction, 1e-9)),
    )  # fmt: skip


class KeptWeights:
    """The model file's weights: an epoch's that replace the kept ones (s2s.selection decides), or the average of the
    last epochs'. Saved by rank 0, with a copy next to the resume state (DVC clears the stage's outputs before a rerun)."""

    def __init__(self, model: Seq2Seq, model_cfg: ModelConfig, cfg: TrainConfig, best_path: Path | None) -> None:
        self.model, self.model_cfg, self.cfg, self.best_path = model, model_cfg, cfg, best_path
        self.direction = METRICS[cfg.select_metric]
        self.recent: list[dict[str, torch.Tensor]] = []  # last epochs' weights, for averaging
        self.average_score: float | None = None  # the averaged weights' validation score, kept or not

    def consider(self, state: TrainState, result: EpochResult, out_dir: Path, is_main: bool) -> None:
        """Epoch `result.epoch` has validated: keep its weights if they replace the kept ones (every rank decides)."""
        kept = selection.keep_epoch(state.kept, result.epoch, result.valid_score, result.valid_bleu, self.direction)
        if kept is not None:
            state.kept = kept
            if is_main:
                self.save(out_dir, {"epoch": result.epoch, "valid_bleu": kept.bleu, "valid_score": kept.score})
                if self.best_path is not None:
                    self.best_path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out_dir / MODEL_FILE, self.best_path)
        if is_main and self.cfg.average_last:
            self.recent = [*self.recent, {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}]
            self.recent = self.recent[-self.cfg.average_last :]

    def try_average(self, state: TrainState, out_dir: Path, valid_scores: Callable[[], tuple[float, float]]) -> None:
        """Average the last epochs' weights (into the model); saved if they replace the kept weights."""
        if len(self.recent) < 2:
            return
        averaged = {
            k: functools.reduce(torch.add, [sd[k].float() for sd in self.recent]) / len(self.recent) for k in self.recent[0]
        }
        self.model.load_state_dict({k: v.to(self.recent[-1][k].dtype) for k, v in averaged.items()})
        bleu, self.average_score = valid_scores()
        epochs = tuple(r.epoch for r in state.history[-len(self.recent) :])
        kept = selection.keep_average(state.kept, epochs, self.average_score, bleu, self.direction)
        log.info("average of epochs %d-%d: valid %s %.2f, kept weights %.2f: %s", epochs[0], epochs[-1],
                 self.cfg.select_metric, self.average_score, state.kept.score if state.kept else float("nan"),
                 "the average replaces them" if kept else "they stay")  # fmt: skip
        if kept is not None:
            state.kept = kept
            self.save(out_dir, {"averaged_epochs": len(epochs), "valid_bleu": bleu, "valid_score": kept.score})

    def restore(self, out_dir: Path) -> None:
        """A resumed run: the weights kept before it was stopped back in `out_dir`, which DVC cleared."""
        if self.best_path is not None and self.best_path.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.best_path, out_dir / MODEL_FILE)

    def save(self, out_dir: Path, extra: dict[str, object]) -> None:
        """The model with its config, and the training config that made it (the registry logs what trained)."""
        extra = {**extra, "train_config": self.cfg.model_dump(mode="json")}
        checkpoint.save(out_dir / MODEL_FILE, self.model, self.model_cfg, extra)


@contextlib.contextmanager
def all_local_cores(world: distributed.World, device: torch.device, cfg: TrainConfig) -> Iterator[None]:
    """On CPU, rank 0 validates with the whole machine's threads: the other ranks only wait meanwhile."""
    threads = torch.get_num_threads()
    if world.is_main and world.enabled and device.type == "cpu" and not cfg.threads:
        torch.set_num_threads(machine.cpu_count())
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def finish(trainer: Trainer, summary_path: Path) -> TrainSummary:
    """The summary; rank 0 writes it and removes the resume state (nothing to resume, not even a save a kill cut short)."""
    summary = summarize(trainer)
    if trainer.world.is_main:
        summary.write(summary_path)
        for path in (trainer.resume_path, trainer.best_path):
            if path is not None:
                checkpoint.remove_with_partials(path)
    return summary


def summarize(trainer: Trainer) -> TrainSummary:
    s, processes, kept = trainer.state, trainer.world.world_size, trainer.state.kept
    assert kept is not None  # every run validates at least once
    tokens_per_second = mean_tokens_per_second(s.history)
    return TrainSummary(
        epochs=len(s.history), select_metric=trainer.cfg.select_metric, best_valid_score=kept.score,
        best_valid_bleu=kept.bleu, kept=kept.describe(), kept_epoch=kept.epoch,
        average_valid_score=trainer.kept.average_score, updates=s.updates, resumed_at_update=trainer.resumed_at_update,
        train_pairs=len(trainer.train_data), train_pairs_too_long=trainer.data.too_long,
        parameters=trainer.model.num_parameters(), train_seconds=round(sum(r.seconds for r in s.history), 1),
        tokens_per_second=round(tokens_per_second, 1), processes=processes,
        tokens_per_second_per_process=round(tokens_per_second / processes, 1), device=str(trainer.device),
        peak_memory_mb=round(peak_memory_mb(trainer.device), 1),
        startup_seconds=round(trainer.startup_seconds, 1) if trainer.startup_seconds else None,
        precision=trainer.precision.dtype, precision_reason=trainer.precision.reason,
        cpu_flags=list(trainer.precision.cpu_flags),
    )  # fmt: skip


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
        encoded: Path | None = None,
    ) -> None:
        seed_everything(cfg.seed)
        self.world = world = world or distributed.World()
        self.cfg, self.model_cfg, self.eval_cfg = cfg, model_cfg, eval_cfg
        self.device = setup_device(cfg, world)
        self.tok = Tokenizers.load(tokenizer_dir)
        self.data = TrainingData.load(self.tok, prepared, cfg.max_tokens, cfg.long_sources == "truncate", encoded)
        self.train_data = self.data.train
        self.model = build_model(model_cfg, self.tok.src.get_piece_size(), self.tok.tgt.get_piece_size()).to(self.device)
        log.info("model: %s, %.2fM parameters, device %s", model_cfg.arch, self.model.num_parameters() / 1e6, self.device)
        if world.rank:  # the same initial weights on every rank, but each its own dropout masks
            torch.manual_seed(cfg.seed * 1000 + world.rank)
        self.state, self.budget = TrainState(), Budget(cfg.max_minutes, world)
        self.resumed_at_update, self.stop_signal, self.startup_seconds = 0, 0, 0.0
        self.steps_per_epoch = self.train_data.count_batches(cfg.batch_tokens)
        self.optimizer = make_adam(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step + 1, cfg.warmup_steps, cfg.lr_schedule, self.run_fraction())
        )
        # Summed, then divided by the global batch's token count: the same normalisation on 1 or N processes.
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=cfg.label_smoothing, reduction="sum")
        self.valid_batches = self.data.valid.batches(cfg.batch_tokens, shuffle=False)
        self.valid_examples = self.data.valid_examples[: cfg.valid_bleu_sentences]
        self.translator = Translator(self.model, self.tok, self.device)
        self.precision = precision.choose(cfg.amp, self.device, arch=model_cfg.arch)
        log.info("precision: %s", self.precision.describe())
        self.ddp, self.forward_model = training_forward(self.model, cfg, world)
        key = checkpoint.resume_key(cfg, model_cfg, eval_cfg, prepared, tokenizer_dir, encoded) if resume_dir else ""
        self.resume_path: Path | None = resume_dir / f"{key}.pt" if resume_dir else None
        self.best_path: Path | None = resume_dir / f"{key}-best.pt" if resume_dir else None
        self.kept = KeptWeights(self.model, model_cfg, cfg, self.best_path)

    def fit(self, out_dir: Path, curve_path: Path, summary_path: Path) -> TrainSummary:
        cfg, world = self.cfg, self.world
        if self.load_state():
            self.resumed_at_update = self.state.updates
            if world.is_main:
                self.kept.restore(out_dir)
        self.budget.start(self.state.seconds)  # the budget counts time before a resume too
        while self.state.epoch <= cfg.epochs:
            epoch = self.state.epoch
            seconds = self.train_epoch(epoch)
            # Rank 0 validates and writes; the others wait for its result, so every rank keeps the same history.
            with all_local_cores(world, self.device, cfg):
                mine = self.validate(epoch, seconds) if world.is_main else None
            result = world.broadcast(mine)  # rank 0's, on every rank
            assert result is not None
            self.state.history.append(result)
            self.kept.consider(self.state, result, out_dir, world.is_main)
            if world.is_main:
                write_curve(curve_path, self.state.history)
            self.state.next_epoch()
            if world.broadcast(self.budget.out_of_time(self.budget.elapsed()) or patience_exhausted(self.state, cfg)):
                break
            if epoch < cfg.epochs:
                self.save_state()
                signum = world.broadcast(_stop_signal)  # asked to stop during validation: the state is saved, stop now
                if signum:
                    raise Stopped(signum, epoch + 1, 0)
        if world.is_main:
            self.kept.try_average(self.state, out_dir, self.valid_scores)
        return finish(self, summary_path)

    def train_epoch(self, epoch: int) -> float:
        """Epoch `epoch`'s updates from where it stands (a resumed run mid-epoch); its seconds of training."""
        cfg, s = self.cfg, self.state
        self.model.train()
        batches = self.epoch_batches(epoch)
        report_every = max(1, len(batches) // 5)
        start = time.perf_counter() - s.epoch_seconds
        build = functools.partial(micro_batches, self.train_data, world=self.world, parts=cfg.accumulate)
        for step, built in zip(range(s.step + 1, len(batches) + 1), built_ahead(build, batches[s.step :]), strict=True):
            self.train_step(batches[step - 1], epoch, step, built)
            s.step = step
            for warning in self.budget.probe_update(s.updates, cfg.warmup_steps, self.steps_per_epoch):
                log.warning(warning)
            if self.stop_signal:
                s.epoch_seconds = time.perf_counter() - start
                self.save_state()
                raise Stopped(self.stop_signal, epoch, step)
            if self.budget.out_of_time(self.budget.agreed()):
                log.info("train.max_minutes=%g reached at epoch %d step %d: validating and stopping",
                         cfg.max_minutes, epoch, step)  # fmt: skip
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < len(batches):
                s.epoch_seconds = time.perf_counter() - start
                self.save_state()
            if step % report_every == 0 or step == len(batches):
                elapsed, fraction, lr = self.budget.elapsed(), self.run_fraction(), float(self.scheduler.get_last_lr()[0])
                log_progress(epoch, cfg.epochs, step, len(batches), s, lr, time.perf_counter() - start, elapsed, fraction)
        return time.perf_counter() - start

    def train_step(self, index: list[int] | Indices, epoch: int, step: int, built: MicroBatches | None = None) -> None:
        """One update on the global batch `index` (sentence positions); `built`: its `micro_batches`, if built ahead."""
        cfg, s, world = self.cfg, self.state, self.world
        self.optimizer.zero_grad(set_to_none=True)
        n_tgt, micro = built or micro_batches(self.train_data, index, world, cfg.accumulate)
        loss_sum = torch.zeros((), device=self.device)
        for k, (cpu_batch, weight) in enumerate(micro):
            batch = cpu_batch.to(self.device)
            # Gradients are all-reduced after the last micro-batch only.
            sync = self.ddp.no_sync() if self.ddp is not None and k < len(micro) - 1 else contextlib.nullcontext()
            try:
                with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.autocast):
                    loss = batch_loss(self.forward_model, batch, self.criterion, cfg.teacher_forcing)  # type: ignore[arg-type]  # DDP/compiled wrapper of a Seq2Seq
                (loss * weight).backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
            except torch.cuda.OutOfMemoryError:
                raise out_of_memory(epoch, step, batch, cfg) from None
            if weight:
                loss_sum += loss.detach().float()
        # One small all-reduce: the global loss (so every rank sees a NaN and stops at the same step), rank 0's clock
        # (so every rank's time budget and learning-rate schedule agree) and any rank's stop request (all stop).
        elapsed = self.budget.elapsed() if world.is_main else 0.0
        total, self.budget.shared, stop = world.sum([float(loss_sum), elapsed, float(_stop_signal)], self.device)
        self.stop_signal = _stop_signal or (int(signal.SIGTERM) if stop else 0)  # another rank was asked to stop
        if not math.isfinite(total):
            raise TrainingError(f"loss is {total} at epoch {epoch} step {step}; lower train.lr or check the data")
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.scheduler.step()
        s.tokens += n_tgt + self.train_data.source_tokens(index)
        s.loss_sum += total
        s.loss_tokens += n_tgt
        s.updates += 1
        self.startup_seconds = self.startup_seconds or time.time() - psutil.Process().create_time()  # TrainSummary's

    def validate(self, epoch: int, seconds: float) -> EpochResult:
        s = self.state
        valid_loss = validation_loss(self.model, self.valid_batches, self.device)
        valid_bleu, valid_score = self.valid_scores()
        result = EpochResult(
            epoch, round(s.loss_sum / max(s.loss_tokens, 1), 4), round(valid_loss, 4), round(math.exp(min(valid_loss, 50)), 3),
            valid_bleu, valid_score, round(s.tokens / max(seconds, 1e-9), 1), round(seconds, 1),
        )  # fmt: skip
        chosen = "" if self.cfg.select_metric == "bleu" else f"  valid {self.cfg.select_metric} {valid_score:.2f}"
        log.info(
            "epoch %d done: train loss %.3f  valid loss %.3f  valid BLEU %.2f%s  %.0f tok/s  %.0f s",
            epoch, result.train_loss, valid_loss, valid_bleu, chosen, result.tokens_per_second, seconds,
        )  # fmt: skip
        return result

    def valid_scores(self) -> tuple[float, float]:
        """Greedy decoding of the validation sentences: their BLEU and their train.select_metric."""
        cfg = self.eval_cfg
        hyps = self.translator.translate([e.src for e in self.valid_examples], cfg.model_copy(update={"beam_size": 1}))
        references = [e.references(cfg.references) for e in self.valid_examples]
        scores = score(hyps, references, ("bleu", self.cfg.select_metric), cfg.rouge_multi, cfg.rouge_stemmer)
        return scores["bleu"], scores[self.cfg.select_metric]

    def epoch_batches(self, epoch: int) -> list[Indices]:
        """The global batches of `epoch` (sentence positions): the same on every rank, new for every epoch."""
        return bucket_indices(self.train_data.lengths(), self.cfg.batch_tokens, shuffle=True, seed=self.cfg.seed * 1000 + epoch)

    def run_fraction(self) -> float:
        """How much of the run is done: steps over `epochs` epochs, or the time budget if that is further along."""
        s = self.state
        steps = ((s.epoch - 1) * self.steps_per_epoch + s.step) / (self.cfg.epochs * self.steps_per_epoch)
        return min(max(steps, self.budget.fraction()), 1.0)

    # ------------------------------------------------------------------ resume state

    def save_state(self) -> None:
        """Save the resume state (rank 0 writes; every rank calls this, as it gathers each rank's RNG state)."""
        rng = self.world.gather(rng_state()) if self.resume_path is not None else []
        if self.resume_path is not None and self.world.is_main:
            self.state.seconds = self.budget.elapsed()
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "progress": self.state.state_dict(), "rng": rng}  # fmt: skip
            checkpoint.atomic_torch_save(state, self.resume_path)

    def load_state(self) -> bool:
        """Continue from the resume state rank 0 reads; every rank gets the same one."""
        state = self.world.broadcast(
            checkpoint.read_resume(self.resume_path) if self.world.is_main and self.resume_path else None
        )
        if state is None:
            return False
        for name, part in (("model", self.model), ("optimizer", self.optimizer), ("scheduler", self.scheduler),
                           ("progress", self.state)):  # fmt: skip
            part.load_state_dict(state[name])
        if self.world.rank < len(state["rng"]):
            set_rng_state(state["rng"][self.world.rank])
        else:  # saved by a run on fewer processes: a fresh stream for this rank, still reproducible
            seed_everything(self.cfg.seed * 1000 + self.world.rank + 7919 * self.state.step)
        log.info("resuming from %s: epoch %d, step %d", self.resume_path, self.state.epoch, self.state.step)
        return True


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
    encoded: Path | None = None,
) -> TrainSummary:
    """Train, validate every epoch, keep the best weights; resumes a killed run from `resume_dir`. `encoded`: the
    encode stage's files (without them, `prepared` is tokenized at the start)."""
    trainer = Trainer(cfg, model_cfg, eval_cfg, prepared, tokenizer_dir, resume_dir, world, encoded)
    return trainer.fit(out_dir, curve_path, summary_path)
