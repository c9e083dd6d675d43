"""s2s/precision.py: train.amp picks bf16 where the CPU (or GPU) multiplies it natively, float32 elsewhere.

Both CPU branches run here whatever this machine is: the flags are faked. bf16 autocast also runs on a CPU
without bf16 units (oneDNN emulates it, slowly), so the bf16 training test runs in CI too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import TINY_PARAMS, deep_merge

from s2s import checkpoint, ingest, precision, tokenizer
from s2s.config import parse_params
from s2s.layout import read_prepared
from s2s.train import Trainer
from s2s.train_records import TrainSummary
from s2s.translate import Translator

AMX = frozenset({"avx2", "fma", "avx512f", "amx_tile", "amx_bf16", "amx_int8"})
AVX2 = frozenset({"avx2", "fma", "sse4_2"})
CPU = torch.device("cpu")


def test_auto_picks_bf16_on_a_cpu_with_amx_or_avx512_bf16() -> None:
    for flags, unit in ((AMX, "amx_bf16"), (AVX2 | {"avx512f", "avx512_bf16"}, "avx512_bf16")):
        chosen = precision.choose("auto", CPU, flags)
        assert (chosen.dtype, chosen.autocast) == ("bfloat16", True)
        assert unit in chosen.reason and unit in chosen.cpu_flags


def test_auto_keeps_float32_on_an_avx2_cpu_and_off_is_always_float32() -> None:
    chosen = precision.choose("auto", CPU, AVX2)
    assert (chosen.dtype, chosen.autocast) == ("float32", False)
    assert chosen.reason == "train.amp=auto: the CPU has no amx_bf16 or avx512_bf16"
    assert chosen.cpu_flags == ("avx2", "fma")  # the matmul-related flags only, in a fixed order
    assert precision.choose("off", CPU, AMX).dtype == "float32"


def test_bf16_asked_for_on_a_cpu_without_units_is_done_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    chosen = precision.choose("bf16", CPU, AVX2)
    assert chosen.dtype == "bfloat16"
    assert "bf16 is emulated and slower than float32 here" in caplog.text


def test_cpu_flags_reads_this_machine() -> None:
    flags = precision.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert flags and all(isinstance(f, str) and " " not in f for f in flags)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("precision")
    params = parse_params(TINY_PARAMS)
    ingest.run(params.ingest, root, root / "data", root / "ingest.json")
    pairs = read_prepared(root / "data", "train")
    tokenizer.train(params.tokenizer, [s for s, _ in pairs], [t for _, t in pairs], root / "tok")
    return root, root / "data", root / "tok"


def first_losses(trainer: Trainer, updates: int) -> list[float]:
    """The loss per target token of each of the first `updates` updates of epoch 1."""
    losses = []
    for step, index in enumerate(trainer.epoch_batches(1)[:updates], start=1):
        before, tokens = trainer.state.loss_sum, trainer.train_data.target_tokens(index)
        trainer.train_step(index, 1, step)
        losses.append((trainer.state.loss_sum - before) / tokens)
    return losses


def test_recurrent_models_train_in_float32_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """oneDNN's LSTM has no bf16 primitive on an AVX2 CPU (measured: "could not create a primitive descriptor")."""
    assert precision.choose("auto", CPU, AMX, arch="rnn").dtype == "float32"
    chosen = precision.choose("bf16", CPU, AMX, arch="rnn")
    assert chosen.dtype == "float32" and "recurrent models train in float32 on CPU" in chosen.reason
    assert "train.amp=bf16" in caplog.text


@pytest.mark.slow
def test_bf16_training_follows_float32_and_saves_float32_weights(
    prepared: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, data, tok = prepared
    arch = "transformer"
    # Small: on a CPU without bf16 units (CI's may be one) a bf16 matmul is emulated, ~160x slower than float32.
    model = {"arch": arch, "transformer": {"d_model": 32, "heads": 2, "ff": 64, "encoder_layers": 1, "decoder_layers": 1}}
    params = parse_params(deep_merge(TINY_PARAMS, {"model": model, "train": {"amp": "auto", "device": "cpu", "epochs": 1}}))
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
    fp32 = Trainer(params.train, params.model, params.evaluate, data, tok)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    bf16 = Trainer(params.train, params.model, params.evaluate, data, tok)
    assert (fp32.precision.dtype, bf16.precision.dtype) == ("float32", "bfloat16")

    reference, mixed = first_losses(fp32, 6), first_losses(bf16, 6)
    assert reference != mixed  # bf16 really ran: its rounding shows
    # The first loss is the same weights' in both precisions: within 0.1% (measured 0.003%). The weights then part
    # ways a little more at each update: within 1% over the first six (measured at most 0.011% on this small model;
    # on transformer-cpu's d256 model at most 0.22% over six, and 1.4% by the eighth update).
    assert abs(mixed[0] - reference[0]) <= 0.001 * reference[0]
    assert all(abs(m - r) <= 0.01 * r for r, m in zip(reference, mixed, strict=True)), (reference, mixed)

    summary = bf16.fit(root / f"bf16-{arch}", root / f"bf16-{arch}.csv", root / f"bf16-{arch}.json")
    written = TrainSummary.read(root / f"bf16-{arch}.json")
    assert (summary.precision, written.precision) == ("bfloat16", "bfloat16")
    assert "amx_bf16" in written.cpu_flags and "amx_bf16" in written.precision_reason
    state = torch.load(root / f"bf16-{arch}" / "model.pt", weights_only=True)["state_dict"]
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}

    # The checkpoint decodes the same whatever the CPU. Decoding reads no flags today (it is float32 everywhere), so
    # this holds by construction; it is here for when decoding follows the precision too.
    sources = [s for s, _ in read_prepared(data, "test")[:8]]
    outputs = []
    for flags in (AMX, AVX2):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        translator = Translator.load(root / f"bf16-{arch}" / "model.pt", tok, "cpu")
        outputs.append(translator.translate(sources, parse_params({}).evaluate))
    assert outputs[0] == outputs[1] and any(outputs[0])
    assert checkpoint.load_model(root / f"bf16-{arch}" / "model.pt")[2]["train_config"]["amp"] == "auto"
