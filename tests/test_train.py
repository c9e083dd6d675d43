"""s2s/train.py: the Trainer. A run killed with SIGKILL resumes to the same result; NaN and OOM name the step; recipe options."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from support import TINY_PARAMS, deep_merge

from s2s import checkpoint, encoded, ingest, tokenizer
from s2s.config import parse_params
from s2s.layout import read_prepared
from s2s.tokenizer import Tokenizers
from s2s.train import Trainer, TrainingError, built_ahead, lr_factor

pytestmark = pytest.mark.slow
PARAMS = deep_merge(TINY_PARAMS, {"train": {"epochs": 2, "checkpoint_every": 3, "batch_tokens": 600}})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    params = parse_params(PARAMS)
    ingest.run(params.ingest, root, root / "data", root / "ingest.json")
    pairs = read_prepared(root / "data", "train")
    tokenizer.train(params.tokenizer, [s for s, _ in pairs], [t for _, t in pairs], root / "tok")
    encoded.encode(Tokenizers.load(root / "tok"), root / "data", root / "encoded")  # what the stage trains from
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return root, root / "data", root / "tok"


def train_cmd(root: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "s2s.stages.train", "--params", str(root / "params.yaml"), "--data", str(root / "data"),
            "--encoded", str(root / "encoded"), "--tokenizer", str(root / "tok"), "--out", str(root / out / "model"),
            "--curve", str(root / out / "curve.csv"), "--summary", str(root / out / "train.json"),
            "--resume-dir", str(root / out / "resume")]  # fmt: skip


def learning_curve(path: Path) -> list[tuple[str, ...]]:
    """Losses and BLEU per epoch; the timing columns naturally differ."""
    with path.open() as handle:
        return [(r["epoch"], r["train_loss"], r["valid_loss"], r["valid_bleu"]) for r in csv.DictReader(handle)]


def test_killed_training_resumes_to_the_same_result(prepared: tuple[Path, Path, Path]) -> None:
    root, _, _ = prepared
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    subprocess.run(train_cmd(root, "whole"), check=True, capture_output=True, env=env, timeout=600)

    proc = subprocess.Popen(train_cmd(root, "killed"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    resume_dir = root / "killed" / "resume"
    deadline = time.monotonic() + 120
    while not (resume_dir.is_dir() and any(p.suffix == ".pt" and "-best" not in p.name for p in resume_dir.iterdir())):
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # let it get a few steps past the state it saved
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "killed" / "train.json").exists()

    again = subprocess.run(train_cmd(root, "killed"), check=True, capture_output=True, text=True, env=env, timeout=600)
    assert "resuming from" in again.stdout
    assert learning_curve(root / "killed" / "curve.csv") == learning_curve(root / "whole" / "curve.csv")
    whole = torch.load(root / "whole" / "model" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(root / "killed" / "model" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert list(resume_dir.iterdir()) == []  # a finished run leaves nothing to resume


def test_nan_loss_stops_with_the_step(prepared: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, data, tok = prepared
    params = parse_params(PARAMS)
    trainer = Trainer(params.train, params.model, params.evaluate, data, tok)
    calls = {"n": 0}
    real = trainer.criterion

    def poisoned(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return real(logits, target) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(trainer, "criterion", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1 step 3; lower train.lr"):
        trainer.fit(root / "nan" / "model", root / "nan" / "curve.csv", root / "nan" / "train.json")
    assert not (root / "nan" / "train.json").exists()


def test_out_of_memory_names_the_batch_setting(prepared: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, data, tok = prepared
    params = parse_params(PARAMS)
    trainer = Trainer(params.train, params.model, params.evaluate, data, tok)

    def oom(*args: object, **kwargs: object) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("s2s.train.batch_loss", oom)
    with pytest.raises(TrainingError, match=r"CUDA out of memory at epoch 1 step 1 .*lower train.batch_tokens \(now 600\)"):
        trainer.fit(root / "oom" / "model", root / "oom" / "curve.csv", root / "oom" / "train.json")


@pytest.mark.parametrize("kernel", ["loop", "foreach", "fused"])
def test_adam_kernels_make_the_same_updates(kernel: str) -> None:
    """train.adam_kernel changes how Adam runs, not what it does: three updates agree with PyTorch's default."""
    from s2s.train import make_adam

    weights = []
    for name in ("auto", kernel):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        cfg = parse_params({"train": {"adam_kernel": name, "lr": 0.01}}).train
        optimizer = make_adam(model, cfg)
        for step in range(3):
            optimizer.zero_grad()
            model(torch.randn(5, 8, generator=torch.Generator().manual_seed(step))).pow(2).sum().backward()
            optimizer.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        if name == "fused":
            assert optimizer.param_groups[0]["fused"] is True
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_recipe_options_averaging_and_budget(prepared: tuple[Path, Path, Path]) -> None:
    root, data, tok = prepared
    params = parse_params(deep_merge(PARAMS, {"train": {"amp": "off", "average_last": 2, "epochs": 2, "device": "cpu"}}))
    trainer = Trainer(params.train, params.model, params.evaluate, data, tok)
    summary = trainer.fit(root / "avg", root / "avg.csv", root / "avg.json")
    assert summary.epochs == 2 and (root / "avg" / "model.pt").is_file()
    # The summary says whose weights the model holds: the average of both epochs, or the best epoch's, by their scores.
    averaged = checkpoint.load_model(root / "avg" / "model.pt")[2].get("averaged_epochs") == 2
    assert summary.kept == ("average of epochs 1-2" if averaged else f"epoch {summary.kept_epoch}")
    assert summary.kept_epoch is None if averaged else summary.kept_epoch in (1, 2)  # no epoch whose weights were not kept
    assert isinstance(summary.average_valid_score, float)
    # The kept weights' score is the average's when it is kept, and at least as good as it otherwise.
    if averaged:
        assert summary.best_valid_score == summary.average_valid_score
    else:
        assert summary.best_valid_score > summary.average_valid_score
    with (root / "avg.csv").open() as handle:
        assert all(math.isfinite(float(r["valid_loss"])) for r in csv.DictReader(handle))
    budget = parse_params(deep_merge(PARAMS, {"train": {"max_minutes": 0.0001, "epochs": 5}}))
    short = Trainer(budget.train, budget.model, budget.evaluate, data, tok).fit(root / "b", root / "b.csv", root / "b.json")
    assert short.epochs == 1  # the budget ran out in the first epoch: validated once, then stopped


def test_lr_factor_warmup_then_schedules() -> None:
    assert [lr_factor(s, 4, "constant") for s in (1, 2, 4, 100)] == [0.25, 0.5, 1.0, 1.0]
    assert lr_factor(16, 4, "inverse_sqrt") == 0.5
    assert lr_factor(2, 4, "cosine", fraction=0.9) == 0.5  # warm-up first, whatever the fraction
    cosine = [lr_factor(10, 4, "cosine", fraction=f) for f in (0.0, 0.5, 1.0, 1.5)]
    assert cosine[0] == 1.0 and abs(cosine[1] - 0.5) < 1e-12 and cosine[2] == cosine[3] == 0.0


def test_cosine_schedule_ends_near_zero_and_budget_survives_a_resume(prepared: tuple[Path, Path, Path]) -> None:
    root, data, tok = prepared
    params = parse_params(deep_merge(PARAMS, {"train": {"lr_schedule": "cosine", "adam_betas": [0.9, 0.98]}}))
    trainer = Trainer(params.train, params.model, params.evaluate, data, tok)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    trainer.fit(root / "cos", root / "cos.csv", root / "cos.json")
    assert trainer.run_fraction() == 1.0
    assert trainer.scheduler.get_last_lr()[0] < 0.05 * params.train.lr  # decayed to ~0 over the 2 epochs

    budget = parse_params(deep_merge(PARAMS, {"train": {"lr_schedule": "cosine", "max_minutes": 10.0}}))
    first = Trainer(budget.train, budget.model, budget.evaluate, data, tok, resume_dir=root / "budget")
    first.budget.clock -= 300  # as if 5 of the 10 minutes had been spent before the process was killed
    assert 0.5 <= first.run_fraction() < 0.6
    first.save_state()
    second = Trainer(budget.train, budget.model, budget.evaluate, data, tok, resume_dir=root / "budget")
    assert second.load_state() and second.state.seconds >= 300  # the budget counts the time before the resume


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_and_compile(prepared: tuple[Path, Path, Path]) -> None:
    root, data, tok = prepared
    for arch in ({"arch": "rnn"}, {"arch": "transformer", "transformer": {"d_model": 64, "heads": 4, "ff": 128}}):
        over = {"model": arch, "train": {"device": "cuda", "amp": "bf16", "compile": True, "epochs": 1}}
        params = parse_params(deep_merge(PARAMS, over))
        trainer = Trainer(params.train, params.model, params.evaluate, data, tok)
        assert trainer.precision.autocast
        summary = trainer.fit(root / "gpu", root / "gpu.csv", root / "gpu.json")
        assert summary.device.startswith("cuda")
        with (root / "gpu.csv").open() as handle:
            assert all(math.isfinite(float(r["valid_loss"])) for r in csv.DictReader(handle))


def test_selecting_on_ter_keeps_the_lowest(prepared: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, data, tok = prepared
    params = parse_params(deep_merge(PARAMS, {"train": {"epochs": 3, "select_metric": "ter", "average_last": 0}}))
    trainer = Trainer(params.train, params.model, params.evaluate, data, tok)
    # (BLEU, TER) per epoch: BLEU is best at epoch 3, TER (lower is better) at epoch 2.
    scores = iter([(10.0, 60.0), (12.0, 50.0), (15.0, 55.0)])
    monkeypatch.setattr(trainer, "valid_scores", lambda: next(scores))
    out = root / "ter"
    summary = trainer.fit(out / "model", out / "curve.csv", out / "train.json")
    assert (summary.select_metric, summary.best_valid_score, summary.best_valid_bleu) == ("ter", 50.0, 12.0)
    assert (summary.kept_epoch, summary.kept) == (2, "epoch 2")
    kept = torch.load(out / "model" / "model.pt", weights_only=True)
    assert (kept["epoch"], kept["valid_score"]) == (2, 50.0)
    with (out / "curve.csv").open() as handle:
        assert [float(r["valid_score"]) for r in csv.DictReader(handle)] == [60.0, 50.0, 55.0]


def test_selecting_on_exact_match_scores_the_validation_outputs(
    prepared: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, data, tok = prepared
    params = parse_params(deep_merge(PARAMS, {"train": {"epochs": 3, "select_metric": "exact_match", "average_last": 0}}))
    trainer = Trainer(params.train, params.model, params.evaluate, data, tok)
    valid = trainer.valid_examples
    # The outputs of each epoch: the first 10%, 30%, 20% of them equal their reference (one with extra spaces).
    right = iter([len(valid) // 10, 3 * len(valid) // 10, 2 * len(valid) // 10])

    def outputs(sources: list[str], cfg: object) -> list[str]:
        n = next(right)
        return [f" {e.tgt}  " if i < n else "no" for i, e in enumerate(valid)]

    monkeypatch.setattr(trainer.translator, "translate", outputs)
    out = root / "exact"
    summary = trainer.fit(out / "model", out / "curve.csv", out / "train.json")
    assert (summary.select_metric, summary.kept_epoch) == ("exact_match", 2)
    assert summary.best_valid_score == round(100 * (3 * len(valid) // 10) / len(valid), 2)


def test_batches_are_built_one_step_ahead_in_a_background_thread() -> None:
    events: list[tuple[str, int, str]] = []

    def build(item: int) -> int:
        events.append(("build", item, threading.current_thread().name))
        return item * 10

    used = []
    for value in built_ahead(build, [1, 2, 3, 4]):
        events.append(("use", value // 10, threading.current_thread().name))
        used.append(value)
    assert used == [10, 20, 30, 40]
    builds = [(item, thread) for kind, item, thread in events if kind == "build"]
    assert [item for item, _ in builds] == [1, 2, 3, 4]
    assert all(thread.startswith("s2s-batches") for _, thread in builds)
    # Never more than one ahead: while item k is in use, nothing past k + 1 has been built.
    for position, (kind, item, _) in enumerate(events):
        if kind == "use":
            assert max(i for k, i, _ in events[:position] if k == "build") <= item + 1
    assert list(built_ahead(build, [])) == []
