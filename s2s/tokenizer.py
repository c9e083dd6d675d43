"""SentencePiece subword vocabularies: trained once in their own stage, loaded everywhere else.

Special ids are fixed (pad 0, unk 1, bos 2, eos 3) so the model code can rely
on them whatever the vocabulary.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from s2s.config import TokenizerConfig
from s2s.errors import S2SError
from s2s.layout import join_lines

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
META = "tokenizer.json"


class TokenizerError(S2SError, RuntimeError):
    pass


def _train_one(sentences: Iterable[str], cfg: TokenizerConfig, out: Path) -> None:
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)  # sentence sampling is random; fix it for reproducible vocabularies
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.max_sentences,
            shuffle_input_sentence=True,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as err:
        limit = re.search(r"value <= (\d+)", str(err))
        if limit or "Vocabulary size" in str(err):
            most = f"at most {limit.group(1)} fits" if limit else str(err)
            raise TokenizerError(
                f"tokenizer.vocab_size={cfg.vocab_size} is too large for this data ({most}); lower tokenizer.vocab_size"
            ) from None
        raise
    out.write_bytes(model.getvalue())


def train(cfg: TokenizerConfig, src: Iterable[str], tgt: Iterable[str], out_dir: Path, newline: str | None = None) -> None:
    """Train one joint model, or one per side, into `out_dir`; `newline`: the separator the texts' line breaks were
    joined with (layout.TEXT_FILE), which new inputs get too. The texts may be streams: SentencePiece samples
    `tokenizer.max_sentences` of them as it reads, so memory does not grow with the corpus."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.joint:
        _train_one(itertools.chain(src, tgt), cfg, out_dir / "joint.model")
        meta = {"src": "joint.model", "tgt": "joint.model"}
    else:
        _train_one(src, cfg, out_dir / "src.model")
        _train_one(tgt, cfg, out_dir / "tgt.model")
        meta = {"src": "src.model", "tgt": "tgt.model"}
    (out_dir / META).write_text(json.dumps({**meta, "newline": newline, "config": cfg.model_dump()}, indent=2,
                                           ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    log.info("trained %s tokenizer(s), vocab %d, in %s", "joint" if cfg.joint else "separate", cfg.vocab_size, out_dir)


@dataclass(frozen=True)
class Tokenizers:
    """The source and target processors (the same object when the vocabulary is joint)."""

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor
    newline: str | None = None  # what a source's line breaks become (documents); None: sources are taken as they are

    @classmethod
    def load(cls, directory: Path) -> Tokenizers:
        meta_path = directory / META
        if not meta_path.is_file():
            raise TokenizerError(f"{meta_path}: tokenizer metadata not found; run the tokenizer stage first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        src = spm.SentencePieceProcessor(model_file=str(directory / meta["src"]))
        tgt = src if meta["tgt"] == meta["src"] else spm.SentencePieceProcessor(model_file=str(directory / meta["tgt"]))
        return cls(src=src, tgt=tgt, newline=meta.get("newline"))

    def encode_src(self, sentences: list[str], threads: int | None = None) -> list[list[int]]:
        """Subword ids; `threads`: SentencePiece's worker threads (None: its default)."""
        if self.newline:  # a multi-line input as the model was trained on it; prepared texts have no breaks left
            sentences = [join_lines(s, self.newline) for s in sentences]
        ids: list[list[int]] = self.src.encode(sentences, num_threads=threads)  # sentencepiece has no type information
        return ids

    def encode_tgt(self, sentences: list[str], threads: int | None = None) -> list[list[int]]:
        ids: list[list[int]] = self.tgt.encode(sentences, num_threads=threads)
        return ids

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        texts: list[str] = self.tgt.decode(ids)
        return texts
