"""The task a registered model holds: what a client of the model may rely on, and what the gate compares.

A registered model holds one task, the source and target languages and the data's name, so the promotion gate
never scores a model of one task against a champion of another (an English->French model against an
English->German champion, say). The tokenizer's vocabulary is not part of it: a new recipe may change the
vocabulary of the same task, and the gate scores both models on detokenized text; the vocabulary a version was
trained with is in its lineage tags (`dvc.tokenizer.tokenizer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from s2s.config import IngestConfig, Params, RegistryConfig

# Version tags: s2s.task.src_lang, s2s.task.tgt_lang, s2s.task.data.
TAG_PREFIX = "s2s.task."
BUILTIN_DATA = "builtin"  # the data name of the generated corpus (ingest.corpus: builtin) when ingest.dataset is unset


@dataclass(frozen=True)
class Task:
    src_lang: str
    tgt_lang: str
    data: str  # ingest.dataset; "builtin" for the generated corpus; "" for own files without a name

    @classmethod
    def of(cls, ingest: IngestConfig) -> Task:
        data = ingest.dataset or (BUILTIN_DATA if ingest.corpus == "builtin" else "")
        return cls(ingest.src_lang, ingest.tgt_lang, data)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Task | None:
        """The task a version's tags record; None for a version registered before s2s recorded tasks."""
        if f"{TAG_PREFIX}src_lang" not in tags:
            return None
        return cls(**{f.name: tags.get(f"{TAG_PREFIX}{f.name}", "") for f in fields(cls)})

    def tags(self) -> dict[str, str]:
        return {f"{TAG_PREFIX}{f.name}": getattr(self, f.name) for f in fields(self)}

    def model_name(self) -> str:
        """The default registered model name: s2s-[DATA-]SRC-TGT, e.g. s2s-builtin-en-de, s2s-multi30k-en-de, s2s-en-fr."""
        return "-".join(part for part in ("s2s", self.data, self.src_lang, self.tgt_lang) if part)

    def describe(self) -> str:
        return f"{self.src_lang}->{self.tgt_lang}, data {self.data or '(own files, unnamed)'}"

    def differences(self, other: Task) -> list[str]:
        """`key ours vs theirs` for each field that differs, as params.yaml names it."""
        keys = {"src_lang": "ingest.src_lang", "tgt_lang": "ingest.tgt_lang", "data": "ingest.dataset"}
        return [
            f"{keys[f.name]} {getattr(self, f.name) or '(none)'!s} vs {getattr(other, f.name) or '(none)'!s}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def resolve_registry(params: Params) -> RegistryConfig:
    """params' registry section with its model name filled in: registry.model_name, else the task's default name."""
    if params.registry.model_name:
        return params.registry
    return params.registry.model_copy(update={"model_name": Task.of(params.ingest).model_name()})
