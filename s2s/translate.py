"""Text in, text out: a trained model plus its tokenizers.

Used by the evaluate stage, the registered MLflow model and `s2s translate`,
so all three decode the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from s2s import checkpoint
from s2s.batching import pad
from s2s.config import DecodingConfig
from s2s.models import Seq2Seq
from s2s.search import Hypothesis, translate_ids
from s2s.tokenizer import Tokenizers

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class Translation:
    source: str
    text: str
    tokens: list[str]  # target subword pieces (without EOS)
    source_tokens: list[str]
    attention: list[list[float]] | None  # (len(tokens) + 1, len(source_tokens)): rows incl. EOS


# Longer inputs are cut: far beyond anything trained on, and they would blow up memory.
MAX_SOURCE_TOKENS = 512


def source_ids(tokenizers: Tokenizers, sources: list[str], limit: int | None = None) -> list[list[int]]:
    """Source subword ids as every engine feeds them: cut to MAX_SOURCE_TOKENS (or the model's `limit`), an empty
    line as one <unk>."""
    cut = min(MAX_SOURCE_TOKENS, limit or MAX_SOURCE_TOKENS)
    ids = [s[:cut] for s in tokenizers.encode_src(sources)]
    return [s if s else [tokenizers.src.unk_id()] for s in ids]


def length_batches(ids: list[list[int]], batch_size: int, max_tokens: int = 0) -> Iterator[list[int]]:
    """Indices of `ids` in batches, longest first: similar lengths share a batch and a too-big batch fails early.

    A batch holds at most `batch_size` sentences and, with `max_tokens`, at most that many padded source tokens
    (always at least one sentence): memory stays bounded on long sources.
    """
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batch: list[int] = []
    for i in order:
        longest = len(ids[batch[0]]) if batch else len(ids[i])
        if batch and (len(batch) >= batch_size or (max_tokens and (len(batch) + 1) * max(longest, 1) > max_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def decode_batches(ids: list[list[int]], cfg: DecodingConfig, beam: int) -> Iterator[list[int]]:
    """`length_batches` as a decoding config bounds them: batch_size sentences, batch_tokens source tokens x beam."""
    return length_batches(ids, cfg.batch_size, max(cfg.batch_tokens // beam, 1))


class Translator:
    """The PyTorch engine."""

    engine = "pytorch"

    def __init__(self, model: Seq2Seq, tokenizers: Tokenizers, device: torch.device) -> None:
        self.model, self.tok, self.device = model.eval(), tokenizers, device

    @classmethod
    def load(cls, model_path: Path, tokenizer_dir: Path, device: str = "auto") -> Translator:
        dev = resolve_device(device)
        model, _, _ = checkpoint.load_model(model_path, dev)
        return cls(model, Tokenizers.load(tokenizer_dir), dev)

    def nbest(
        self,
        sources: list[str],
        cfg: DecodingConfig,
        n: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[list[int]], list[list[Hypothesis]]]:
        """Source ids and the `n` best hypotheses of each sentence, best first, in input order."""
        self.model.eval()
        ids = source_ids(self.tok, sources, self.model.max_source_tokens)
        results: list[list[Hypothesis]] = [[] for _ in ids]
        beam = cfg.beam_for(n)
        for index in decode_batches(ids, cfg, beam):
            src = pad([ids[i] for i in index]).to(self.device)
            src_len = torch.tensor([len(ids[i]) for i in index], device=self.device)
            hyps = translate_ids(self.model, src, src_len, beam, cfg.max_len_a, cfg.max_len_b, cfg.length_penalty, n,
                                 cfg.min_len, cfg.no_repeat_ngram)  # fmt: skip
            for i, hyp in zip(index, hyps, strict=True):
                results[i] = hyp
            if progress is not None:
                progress(len(index))
        return ids, results

    def hypotheses(
        self, sources: list[str], cfg: DecodingConfig, progress: Callable[[int], None] | None = None
    ) -> tuple[list[list[int]], list[Hypothesis]]:
        """Source ids and the best hypothesis for each sentence, in input order."""
        ids, results = self.nbest(sources, cfg, 1, progress)
        return ids, [r[0] for r in results]

    def translate_nbest(self, sources: list[str], n: int, cfg: DecodingConfig | None = None) -> list[list[str]]:
        _, results = self.nbest(sources, cfg or DecodingConfig(), n)
        return [self.tok.decode_tgt([h.tokens for h in hyps]) for hyps in results]

    def translate(
        self, sources: list[str], cfg: DecodingConfig | None = None, progress: Callable[[int], None] | None = None
    ) -> list[str]:
        _, hyps = self.hypotheses(sources, cfg or DecodingConfig(), progress)
        return self.tok.decode_tgt([h.tokens for h in hyps])

    def translate_with_attention(self, sources: list[str], cfg: DecodingConfig | None = None) -> list[Translation]:
        ids, hyps = self.hypotheses(sources, cfg or DecodingConfig())
        texts = self.tok.decode_tgt([h.tokens for h in hyps])
        return [
            Translation(
                source=source,
                text=text,
                tokens=[self.tok.tgt.id_to_piece(t) for t in hyp.tokens],
                source_tokens=[self.tok.src.id_to_piece(t) for t in src_ids],
                attention=hyp.attention.tolist() if hyp.attention is not None else None,
            )
            for source, text, hyp, src_ids in zip(sources, texts, hyps, ids, strict=True)
        ]
