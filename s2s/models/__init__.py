"""The model factory: one validated `ModelConfig` in, a `Seq2Seq` out."""

from __future__ import annotations

from s2s.config import ModelConfig
from s2s.models.base import DecoderOutput, DecoderState, Seq2Seq
from s2s.models.copy import CopySeq2Seq
from s2s.models.rnn import RNNSeq2Seq
from s2s.models.transformer import TransformerSeq2Seq

__all__ = ["DecoderOutput", "DecoderState", "Seq2Seq", "build_model"]


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
    if cfg.arch == "rnn":
        return RNNSeq2Seq(src_vocab, tgt_vocab, cfg.rnn)
    if cfg.arch == "transformer":
        model = TransformerSeq2Seq(src_vocab, tgt_vocab, cfg.transformer)
        return CopySeq2Seq(model, cfg.transformer.d_model) if cfg.copy_attention else model
    raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")
