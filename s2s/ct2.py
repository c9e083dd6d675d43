"""CTranslate2: an s2s Transformer converted with CTranslate2's model-spec API, and a translator that runs it.

The spec maps our layers one to one (pre-norm layers, final layer norms,
sqrt(d)-scaled embeddings plus our own position tables, fused QKV), so the
converted model computes what the PyTorch one does: float32 target
log-probabilities agree to 2e-4 (tests/test_ct2.py).

Decoding follows s2s's search. Greedy is the same search. For beam search
CTranslate2 normalises by `length ** alpha` and stops a sentence once
`beam_size` hypotheses have finished, where s2s uses GNMT's
`((5 + length) / 6) ** alpha` and goes on until no live hypothesis can beat
its finished ones; so CTranslate2 is asked for raw log-probabilities of up to
PATIENCE * beam finished hypotheses and s2s's penalty picks among them. What
can still differ: a sentence whose best hypothesis finishes after those, and
sentences cut at their length limit (CTranslate2 takes one limit per batch;
each output is then cut to its own). Recurrent models have no CTranslate2
spec for their decoders and stay on PyTorch.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2s import checkpoint
from s2s.config import QUANTIZATIONS, DecodingConfig, ModelConfig, Quantization
from s2s.errors import ExportError
from s2s.models.transformer import Embedding, TransformerSeq2Seq
from s2s.search import length_penalty, max_lengths
from s2s.tokenizer import BOS, EOS, PAD, UNK, Tokenizers
from s2s.translate import decode_batches, source_ids

log = logging.getLogger(__name__)

GPU_ONLY = ("float16", "bfloat16", "int8_float16", "int8_bfloat16")  # CPUs compute these in float32 or int8
# CTranslate2's beam search goes on until PATIENCE * beam_size hypotheses have finished: 2 found every beam-5
# translation s2s's own search finds on Multi30k test_2016 (1,000 of 1,000; 977 with 1). BENCHMARKS.md.
PATIENCE = 2
ENGINE_FILE = "s2s-engine.json"  # written beside CTranslate2's model.bin: what the folder holds and was made from


def _require_ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:  # pragma: no cover - a dependency of s2s; only a broken environment lacks it
        raise ExportError("the ctranslate2 package is not installed (pip install ctranslate2)") from None
    return ctranslate2


def _linear(spec: Any, layer: torch.nn.Linear) -> None:
    spec.weight = layer.weight.detach().numpy()
    if layer.bias is not None:
        spec.bias = layer.bias.detach().numpy()


def _norm(spec: Any, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = norm.weight.detach().numpy(), norm.bias.detach().numpy()


def _attention(spec: Any, attn: Any, self_attention: bool) -> None:
    """Our q and kv (keys then values) linears into CTranslate2's fused layout."""
    q_w, q_b = attn.q.weight.detach().numpy(), attn.q.bias.detach().numpy()
    kv_w, kv_b = attn.kv.weight.detach().numpy(), attn.kv.bias.detach().numpy()
    if self_attention:  # one linear: [q; k; v]
        spec.linear[0].weight, spec.linear[0].bias = np.concatenate([q_w, kv_w]), np.concatenate([q_b, kv_b])
    else:  # query linear, then [k; v] over the encoder output
        spec.linear[0].weight, spec.linear[0].bias = q_w, q_b
        spec.linear[1].weight, spec.linear[1].bias = kv_w, kv_b
    _linear(spec.linear[-1], attn.out)


def _ffn(spec: Any, ff: torch.nn.Sequential, norm: torch.nn.LayerNorm) -> None:
    _norm(spec.layer_norm, norm)
    first, second = ff[0], ff[3]  # Linear, ReLU, Dropout, Linear
    assert isinstance(first, torch.nn.Linear) and isinstance(second, torch.nn.Linear)
    _linear(spec.linear_0, first)
    _linear(spec.linear_1, second)


def _positions(embed: Embedding) -> np.ndarray:
    """The (max_positions, d) table this side adds: its own learned one, or the fixed sinusoids."""
    table = embed.learned.weight if embed.positions == "learned" else embed.table
    positions: np.ndarray = table.detach().numpy()
    return positions


def model_spec(model: TransformerSeq2Seq, tokenizers: Tokenizers) -> Any:
    """The CTranslate2 TransformerSpec holding this model's weights and vocabularies."""
    _require_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=True, activation=common_spec.Activation.RELU
    )
    spec.config.layer_norm_epsilon = model.enc_norm.eps
    for side, embed in ((spec.encoder, model.src_embed), (spec.decoder, model.tgt_embed)):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = embed.tokens.weight.detach().numpy()
        side.scale_embeddings = True  # tokens * sqrt(d), then positions: as Embedding.forward
        side.position_encodings.encodings = _positions(embed)
    _norm(spec.encoder.layer_norm, model.enc_norm)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers(), strict=True):
        _attention(layer_spec.self_attention, layer.attn, self_attention=True)
        _norm(layer_spec.self_attention.layer_norm, layer.norm1)
        _ffn(layer_spec.ffn, layer.ff, layer.norm2)
    _norm(spec.decoder.layer_norm, model.dec_norm)
    for layer_spec, dec in zip(spec.decoder.layer, model.decoder_layers(), strict=True):
        norms = [norm for norm in dec.norms if isinstance(norm, torch.nn.LayerNorm)]  # before self-, cross-attention, ffn
        _attention(layer_spec.self_attention, dec.self_attn, self_attention=True)
        _norm(layer_spec.self_attention.layer_norm, norms[0])
        _attention(layer_spec.attention, dec.cross_attn, self_attention=False)
        _norm(layer_spec.attention.layer_norm, norms[1])
        _ffn(layer_spec.ffn, dec.ff, norms[2])
    _linear(spec.decoder.projection, model.out)
    for register, sp in ((spec.register_source_vocabulary, tokenizers.src), (spec.register_target_vocabulary, tokenizers.tgt)):
        register([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    pieces = tokenizers.tgt
    spec.config.unk_token, spec.config.bos_token = pieces.id_to_piece(UNK), pieces.id_to_piece(BOS)
    spec.config.eos_token, spec.config.decoder_start_token = pieces.id_to_piece(EOS), pieces.id_to_piece(BOS)
    return spec


# int8 weight types that CPUs compute in. On an x86 CPU without VNNI (AVX2 only: AMD EPYC Zen 3, older Xeons),
# CTranslate2 multiplies u8 activations by s8 weights with vpmaddubsw, which adds each two products into a
# saturating int16: 255 * 127 * 2 overflows it. Measured on an AMD EPYC (AVX2, no AVX-512/VNNI), a Transformer
# that memorised 48 sentences kept 2 of them in int8 with full-range weights and all 48 with these requantized to
# +-63 (7 bits: 255 * 63 * 2 = 32,130 fits), as ONNX Runtime's `reduce_range` does for the same reason. (CTranslate2's
# MKL backend, which it uses on Intel CPUs, does not saturate, but runs 2.3x slower on that AMD CPU.)
CPU_INT8 = ("int8", "int8_float32")
SEVEN_BIT = 63


def seven_bit_weights(spec: Any) -> None:
    """Requantize a CTranslate2 spec's int8 weights (range +-127, one scale per row) to +-SEVEN_BIT, scales to match."""
    from ctranslate2.specs.model_spec import NumpyVariable, Variable, visit_spec

    factor = np.float32(SEVEN_BIT / 127)

    def requantize(layer: Any, name: str, value: Any) -> None:
        key = name.rsplit("/", 1)[-1]
        scale = getattr(layer, f"{key}_scale", None)
        if not isinstance(value, Variable) or value.dtype != "int8" or not isinstance(scale, Variable):
            return
        setattr(layer, key, NumpyVariable(np.rint(value.numpy().astype(np.float32) * factor).astype(np.int8)))
        setattr(layer, f"{key}_scale", NumpyVariable((scale.numpy() * factor).astype(np.float32)))

    visit_spec(spec, requantize)


def convert(model_path: Path, tokenizer_dir: Path, out_dir: Path, quantization: Quantization = "int8") -> Path:
    """Convert an s2s Transformer checkpoint into a CTranslate2 model folder at `out_dir` (replaced if present)."""
    ct2 = _require_ctranslate2()
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    payload = checkpoint.read(model_path)
    cfg = ModelConfig.model_validate(payload["model_config"])
    if cfg.arch != "transformer":
        raise ExportError(
            f"{model_path}: a recurrent model (model.arch={cfg.arch}, decoder {cfg.rnn.decoder}) cannot be exported to "
            "CTranslate2: CTranslate2 runs Transformer encoder-decoders only and has no spec for recurrent cells with "
            "attention; serve this model with the PyTorch engine (the registered version as it is)"
        )
    if cfg.copy_attention:
        raise ExportError(
            f"{model_path}: a model with copy attention (model.copy_attention: true) cannot be exported to CTranslate2: its "
            "decoder mixes the vocabulary with copied source tokens, which CTranslate2's Transformer spec has no place "
            "for; serve it with the PyTorch engine (the registered version as it is)"
        )
    model, _, _ = checkpoint.load_model(model_path, "cpu")
    assert isinstance(model, TransformerSeq2Seq)
    tokenizers = Tokenizers.load(tokenizer_dir)

    # What CTranslate2's Converter.convert does, with the int8 weights requantized in between.
    spec = model_spec(model, tokenizers)
    spec.validate()
    spec.optimize(quantization=quantization)
    if quantization in CPU_INT8:
        seven_bit_weights(spec)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    spec.save(str(out_dir))
    meta = {"engine": "ctranslate2", "quantization": quantization, "ctranslate2": ct2.__version__,
            "max_positions": cfg.transformer.max_positions, "max_source_tokens": model.max_source_tokens}  # fmt: skip
    (out_dir / ENGINE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("converted %s to CTranslate2 (%s) in %s", model_path, quantization, out_dir)
    return out_dir


def engine_meta(model_dir: Path) -> dict[str, Any]:
    """What a converted folder holds: quantization, CTranslate2 version, the model's max_positions."""
    meta = model_dir / ENGINE_FILE
    if not meta.is_file():
        raise ExportError(f"{model_dir}: not a CTranslate2 model exported by s2s (no {ENGINE_FILE})")
    return dict(json.loads(meta.read_text()))


class CT2Translator:
    """The `Translator` interface (translate, translate_nbest) over a CTranslate2 model folder."""

    engine = "ctranslate2"

    def __init__(
        self, translator: Any, tokenizers: Tokenizers, quantization: str, max_positions: int | None,
        max_source_tokens: int | None = None,
    ) -> None:  # fmt: skip
        self.translator, self.tok, self.quantization = translator, tokenizers, quantization
        self.max_positions = max_positions
        self.max_source_tokens = max_source_tokens or max_positions  # the model's source limit, as its checkpoint says
        # Never generated, as in s2s's own search (search.NEVER).
        self.suppress = [[tokenizers.tgt.id_to_piece(PAD)], [tokenizers.tgt.id_to_piece(BOS)]]

    @classmethod
    def load(
        cls, model_dir: Path, tokenizer_dir: Path, device: str = "auto", threads: int = 0, compute_type: str = "default"
    ) -> CT2Translator:
        """`threads` 0: as many as PyTorch uses (all cores unless OMP_NUM_THREADS or torch says otherwise);
        `compute_type` CTranslate2's (default: the folder's quantization)."""
        ct2 = _require_ctranslate2()
        if device == "auto":
            device = "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
        meta = engine_meta(model_dir)
        quantization = meta["quantization"]
        if device == "cpu" and quantization in GPU_ONLY:
            log.warning("%s weights on a CPU: CTranslate2 computes in a CPU type instead", quantization)
        translator = ct2.Translator(
            str(model_dir), device=device, compute_type=compute_type, inter_threads=1,
            intra_threads=threads or torch.get_num_threads(),
        )  # fmt: skip
        return cls(translator, Tokenizers.load(tokenizer_dir), quantization, meta.get("max_positions"),
                   meta.get("max_source_tokens"))  # fmt: skip

    def nbest_pieces(self, sources: list[str], n: int, cfg: DecodingConfig) -> list[list[list[str]]]:
        """The `n` best target pieces of each sentence, best first, in input order."""
        ids = source_ids(self.tok, sources, self.max_source_tokens)
        beam = cfg.beam_for(n)
        cap = self.max_positions - 1 if self.max_positions else None
        limits = max_lengths(torch.tensor([len(s) for s in ids]), cfg.max_len_a, cfg.max_len_b, cap).tolist()
        # Beam search as s2s's own (see the module docstring): CTranslate2 keeps finishing hypotheses until
        # PATIENCE * beam have, scoring them by log-probability alone (an exponent of exactly 0 would end the search at
        # the first finished top beam; 1e-6 changes a score by a millionth of its log), and s2s's GNMT penalty picks.
        options = {"beam_size": 1} if beam == 1 else {
            "beam_size": beam, "patience": PATIENCE, "num_hypotheses": round(beam * PATIENCE), "length_penalty": 1e-6,
            "return_scores": True,
        }  # fmt: skip
        results: list[list[list[str]]] = [[] for _ in ids]
        for index in decode_batches(ids, cfg, beam):
            out = self.translator.translate_batch(
                [[self.tok.src.id_to_piece(t) for t in ids[i]] for i in index],
                **options,
                # One limit per call: the batch's largest (+1 for EOS), then each sentence cut to its own below.
                max_decoding_length=max(limits[i] for i in index) + 1,
                min_decoding_length=cfg.min_len,
                no_repeat_ngram_size=cfg.no_repeat_ngram,
                max_input_length=0,  # source_ids already cut the source
                suppress_sequences=self.suppress,
            )
            for i, result in zip(index, out, strict=True):
                hyps = [hyp[: limits[i]] for hyp in result.hypotheses]
                if beam > 1:  # GNMT over the length with EOS, as search.beam_search
                    alpha = cfg.length_penalty
                    ranked = sorted(zip(hyps, result.scores, strict=True),
                                    key=lambda hs: -hs[1] / length_penalty(len(hs[0]) + 1, alpha))  # fmt: skip
                    hyps = [h for h, _ in ranked]
                results[i] = hyps[:n]
        return results

    def translate_nbest(self, sources: list[str], n: int, cfg: DecodingConfig | None = None) -> list[list[str]]:
        return [[self.tok.tgt.decode(h) for h in hyps] for hyps in self.nbest_pieces(sources, n, cfg or DecodingConfig())]

    def translate(self, sources: list[str], cfg: DecodingConfig | None = None) -> list[str]:
        return [hyps[0] for hyps in self.translate_nbest(sources, 1, cfg)]
