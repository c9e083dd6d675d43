"""CTranslate2 export: the converted model computes what the PyTorch one does, and decodes the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from s2s import checkpoint, tokenizer
from s2s.batching import pad
from s2s.config import EvaluateConfig, ModelConfig, RNNConfig, TokenizerConfig, TransformerConfig
from s2s.corpus import generate_pairs
from s2s.ct2 import CT2Translator, ExportError, convert, engine_meta
from s2s.models import build_model
from s2s.tokenizer import BOS, EOS, Tokenizers
from s2s.translate import Translator

PAIRS = generate_pairs(48, 3)
SOURCES = [s for s, _ in PAIRS]


def _tokenizers(out: Path, joint: bool) -> Tokenizers:
    many = generate_pairs(600, 3)
    cfg = TokenizerConfig(model_type="bpe", vocab_size=120 if joint else 100, joint=joint)
    tokenizer.train(cfg, [s for s, _ in many], [t for _, t in many], out)
    return Tokenizers.load(out)


def _transformer(positions: str = "sinusoidal", shared: bool = True, layers: int = 2) -> ModelConfig:
    return ModelConfig(arch="transformer", transformer=TransformerConfig(
        d_model=32, heads=4, encoder_layers=layers, decoder_layers=layers, ff=64, dropout=0.0, positions=positions,
        max_positions=96, share_embeddings=shared, tie_output=shared))  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small Transformer that has memorised PAIRS: its translations end with EOS, well clear of ties."""
    root = tmp_path_factory.mktemp("ct2")
    tok = _tokenizers(root / "tokenizer", joint=True)
    cfg = _transformer()
    torch.manual_seed(0)
    model = build_model(cfg, tok.src.get_piece_size(), tok.tgt.get_piece_size()).train()
    src_ids, tgt_ids = tok.encode_src(SOURCES), tok.encode_tgt([t for _, t in PAIRS])
    src, src_len = pad(src_ids), torch.tensor([len(s) for s in src_ids])
    tgt_in, tgt_out = pad([[BOS, *t] for t in tgt_ids]), pad([[*t, EOS] for t in tgt_ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)
    for _ in range(300):
        loss = loss_fn(model(src, src_len, tgt_in).logits.flatten(0, 1), tgt_out.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint.save(root / "model.pt", model, cfg)
    return root / "model.pt", root / "tokenizer"


def test_float32_decodes_exactly_as_pytorch(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, tok_dir = trained
    pytorch = Translator.load(model_path, tok_dir, "cpu")
    ct2 = CT2Translator.load(convert(model_path, tok_dir, tmp_path / "f32", "float32"), tok_dir, "cpu")
    assert engine_meta(tmp_path / "f32")["quantization"] == "float32"
    greedy = pytorch.translate(SOURCES, EvaluateConfig())
    assert sum(g == t for g, t in zip(greedy, (t for _, t in PAIRS), strict=True)) >= 40  # the model did learn them
    assert ct2.translate(SOURCES, EvaluateConfig()) == greedy
    for alpha in (0.0, 1.0, 2.0):  # no length penalty, the default, and one that favours long hypotheses
        beam = EvaluateConfig(beam_size=5, length_penalty=alpha, batch_size=16)
        assert ct2.translate(SOURCES, beam) == pytorch.translate(SOURCES, beam), alpha
    nbest = ct2.translate_nbest(SOURCES[:4], 3, EvaluateConfig(beam_size=5))
    assert nbest == pytorch.translate_nbest(SOURCES[:4], 3, EvaluateConfig(beam_size=5))
    # A sentence cut at its length limit: the same prefix as PyTorch's, no longer.
    short = EvaluateConfig(max_len_a=0.1, max_len_b=2)
    assert ct2.translate(SOURCES[:8], short) == pytorch.translate(SOURCES[:8], short)
    assert ct2.translate(["", "We"], EvaluateConfig()) == pytorch.translate(["", "We"], EvaluateConfig())


def test_int8_keeps_the_translations(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, tok_dir = trained
    int8 = CT2Translator.load(convert(model_path, tok_dir, tmp_path / "int8", "int8"), tok_dir, "cpu")
    expected = Translator.load(model_path, tok_dir, "cpu").translate(SOURCES, EvaluateConfig())
    same = sum(a == b for a, b in zip(int8.translate(SOURCES, EvaluateConfig()), expected, strict=True))
    assert same >= 44, f"int8 changed {len(SOURCES) - same} of {len(SOURCES)} memorised translations"
    assert (tmp_path / "int8" / "model.bin").stat().st_size < 0.5 * (model_path.stat().st_size)


@pytest.mark.parametrize(
    ("positions", "joint"), [("sinusoidal", True), ("learned", False)], ids=["sinusoidal-shared", "learned-separate"]
)
def test_every_target_log_probability_matches_pytorch(tmp_path: Path, positions: str, joint: bool) -> None:
    """CTranslate2's score_batch against PyTorch's log-softmax, token by token, for untrained weights of each layout."""
    tok = _tokenizers(tmp_path / "tok", joint)
    cfg = _transformer(positions, shared=joint, layers=3)
    torch.manual_seed(1)
    model = build_model(cfg, tok.src.get_piece_size(), tok.tgt.get_piece_size()).eval()
    checkpoint.save(tmp_path / "model.pt", model, cfg)
    ct2 = CT2Translator.load(convert(tmp_path / "model.pt", tmp_path / "tok", tmp_path / "f32", "float32"), tmp_path / "tok")
    src_ids, tgt_ids = tok.encode_src(SOURCES[:6]), tok.encode_tgt([t for _, t in PAIRS[:6]])
    pieces = [[tok.src.id_to_piece(i) for i in s] for s in src_ids]
    scored = ct2.translator.score_batch(pieces, [[tok.tgt.id_to_piece(i) for i in t] for t in tgt_ids])
    with torch.no_grad():
        logits = model(pad(src_ids), torch.tensor([len(s) for s in src_ids]), pad([[BOS, *t] for t in tgt_ids])).logits
    logp = logits.log_softmax(-1)
    for row, (ids, result) in enumerate(zip(tgt_ids, scored, strict=True)):
        expected = logp[row, torch.arange(len(ids) + 1), torch.tensor([*ids, EOS])]
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=2e-4, rtol=1e-4)


def test_recurrent_models_are_refused_with_the_reason(tmp_path: Path) -> None:
    cfg = ModelConfig(rnn=RNNConfig(emb_dim=8, hidden=8, decoder="bahdanau", cell="gru"))
    checkpoint.save(tmp_path / "model.pt", build_model(cfg, 120, 120), cfg)
    with pytest.raises(ExportError, match=r"recurrent model \(model.arch=rnn, decoder bahdanau\).*Transformer") as err:
        convert(tmp_path / "model.pt", tmp_path / "tok", tmp_path / "out", "int8")
    assert "PyTorch engine" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_copy_attention_models_are_refused_with_the_reason(tmp_path: Path) -> None:
    cfg = _transformer().model_copy(update={"copy_attention": True})
    checkpoint.save(tmp_path / "model.pt", build_model(cfg, 120, 120), cfg)
    with pytest.raises(ExportError, match=r"copy attention \(model.copy_attention: true\) cannot be exported") as err:
        convert(tmp_path / "model.pt", tmp_path / "tok", tmp_path / "out", "int8")
    assert "PyTorch engine" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_int8_weights_are_stored_in_seven_bits_that_avx2_cannot_saturate(trained: tuple[Path, Path]) -> None:
    """vpmaddubsw adds two u8 x s8 products in int16: 255 * 127 * 2 overflows it, 255 * 63 * 2 does not."""
    from ctranslate2.specs.model_spec import Variable, visit_spec

    from s2s.ct2 import SEVEN_BIT, model_spec, seven_bit_weights

    model_path, tok_dir = trained
    model, _, _ = checkpoint.load_model(model_path, "cpu")
    spec = model_spec(model, Tokenizers.load(tok_dir))
    spec.validate()
    spec.optimize(quantization="int8")
    full: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def collect(into: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        def visit(layer: object, name: str, value: object) -> None:
            scale = getattr(layer, f"{name.rsplit('/', 1)[-1]}_scale", None)
            if isinstance(value, Variable) and value.dtype == "int8" and isinstance(scale, Variable):
                into[name] = (value.numpy().astype(np.float32), scale.numpy())

        visit_spec(spec, visit)

    collect(full)
    seven_bit_weights(spec)
    seven: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    collect(seven)
    assert full and set(seven) == set(full)
    assert max(np.abs(w).max() for w, _ in full.values()) == 127
    assert max(np.abs(w).max() for w, _ in seven.values()) == SEVEN_BIT
    for name, (w, scale) in seven.items():  # the same weights, to within one 7-bit step of each row
        before = full[name][0] / full[name][1][:, None]
        assert np.abs(w / scale[:, None] - before).max() <= 1.01 / scale.min()


def _repeats(pieces: list[str], n: int) -> bool:
    grams = [tuple(pieces[i : i + n]) for i in range(len(pieces) - n + 1)]
    return len(grams) != len(set(grams))


def test_min_len_and_no_repeat_ngram_hold_on_both_engines(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, tok_dir = trained
    pytorch = Translator.load(model_path, tok_dir, "cpu")
    ct2 = CT2Translator.load(convert(model_path, tok_dir, tmp_path / "f32", "float32"), tok_dir, "cpu")
    # The memorised outputs are long: the minimum asked for is longer still, and bigrams must not come back.
    _, free = pytorch.hypotheses(SOURCES, EvaluateConfig())
    longest = max(len(h.tokens) for h in free)
    for beam in (1, 4):
        cfg = EvaluateConfig(beam_size=beam, max_len_a=0.0, max_len_b=longest + 8, min_len=longest + 3, no_repeat_ngram=2)
        _, hyps = pytorch.hypotheses(SOURCES, cfg)
        outputs = {
            "pytorch": [[pytorch.tok.tgt.id_to_piece(t) for t in h.tokens] for h in hyps],
            "ctranslate2": [n[0] for n in ct2.nbest_pieces(SOURCES, 1, cfg)],
        }
        for engine, pieces in outputs.items():
            assert all(longest + 3 <= len(p) <= longest + 8 for p in pieces), (engine, beam)
            assert not any(_repeats(p, 2) for p in pieces), (engine, beam)
