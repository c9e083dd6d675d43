"""Typed, frozen configuration, validated once on the way in.

`params.yaml` is parsed into `Params`; every library function takes one of the
section objects below, never the raw dict. Unknown keys are errors that name
the key and list what is allowed, so a misspelt option cannot be silently
ignored (joeynmt's `**kwargs` weak spot).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s2s.errors import S2SError
from s2s.metrics import MetricName, RougeMulti, metric


class ConfigError(S2SError, ValueError):
    """A params file that cannot be used; the message names the file and key."""


# Language codes and dataset names: they become part of MLflow model names (s2s-multi30k-en-de).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- ingest


class Location(_Section):
    """A local path (relative to the workspace) or an http(s) URL, optionally pinned by sha256."""

    path: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @property
    def is_url(self) -> bool:
        return self.path.startswith(("http://", "https://"))


class SplitSource(_Section):
    """One split: two line-aligned files (`src`, `tgt`), one two-column TSV (`tsv`), or documents (`jsonl`, `csv`).

    Documents are read field by field as `FilesSource.fields` names them.
    """

    DOCUMENTS: ClassVar[tuple[str, ...]] = ("jsonl", "csv")

    src: Location | None = None
    tgt: Location | None = None
    tsv: Location | None = None
    jsonl: Location | None = None  # JSON Lines: one object per line
    csv: Location | None = None  # CSV with a header row naming the fields; RFC 4180 quoting, so texts may hold newlines

    @model_validator(mode="after")
    def _one_layout(self) -> SplitSource:
        if (self.src is None) != (self.tgt is None):
            raise ValueError("give both `src` and `tgt` (line-aligned files), or one of `tsv`, `jsonl`, `csv`")
        layouts = [self.src is not None, self.tsv is not None, self.jsonl is not None, self.csv is not None]
        if sum(layouts) != 1:
            raise ValueError("give exactly one layout: `src` and `tgt`, or `tsv`, or `jsonl`, or `csv`")
        return self

    @property
    def document(self) -> tuple[str, Location] | None:
        """("jsonl" | "csv", its location) when the split is documents, else None."""
        for kind in self.DOCUMENTS:
            location: Location | None = getattr(self, kind)
            if location is not None:
                return kind, location
        return None

    def locations(self) -> dict[str, Location]:
        """layout key (src, tgt, tsv, jsonl, csv) -> location, for the keys given."""
        keys = ("src", "tgt", "tsv", *self.DOCUMENTS)
        return {key: location for key in keys if (location := getattr(self, key)) is not None}


class DocumentFields(_Section):
    """Which fields of a JSON Lines or CSV document hold what (README "Tasks")."""

    source: str = Field(min_length=1)  # the input text, e.g. an email body
    target: str = Field(min_length=1)  # the output text trained on, e.g. its subject line
    # Fields holding further references of valid/test items (e.g. [ann0, ann1, ann2]); scored as evaluate.references says.
    references: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    id: str | None = None  # a field carried through to reports/hypotheses.tsv
    # Each line break of a text becomes this separator (runs of breaks one), which the tokenizer learns like any
    # character; null: line breaks are spaces like any other whitespace.
    newline: str | None = "¶"

    @field_validator("newline")
    @classmethod
    def _visible(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in "\t\n\r")):
            raise ValueError("must be a visible separator without tabs or line breaks (or null)")
        return value


class FilesSource(_Section):
    train: SplitSource
    valid: SplitSource | None = None
    test: SplitSource | None = None
    fields: DocumentFields | None = None  # needed when a split is jsonl or csv

    @model_validator(mode="after")
    def _fields_given(self) -> FilesSource:
        documents = [name for name in ("train", "valid", "test") if (s := getattr(self, name)) is not None and s.document]
        if documents and self.fields is None:
            raise ValueError(f"{', '.join(documents)} read documents (jsonl/csv): name their `fields` (source, target, ...)")
        return self


class BuiltinSource(_Section):
    pairs: int = Field(default=30000, ge=100)
    seed: int = 1


class HoldoutConfig(_Section):
    valid: int = Field(default=1000, ge=1)
    test: int = Field(default=1000, ge=1)


class CleanConfig(_Section):
    """Cleaning of the training split (given valid/test sets are never filtered); each rule null or 0 when off."""

    max_words: int | None = Field(default=100, ge=1)  # null: no length filter (documents)
    max_ratio: float | None = Field(default=3.0, gt=1.0)  # null: no length-ratio filter (summaries are short by design)
    min_ratio_words: int = Field(default=4, ge=1)
    # Sources longer than this many words are cut to it (counted as `truncated`), not dropped; null: never cut.
    max_source_words: int | None = Field(default=None, ge=1)
    dedup: bool = True
    drop_leaks: bool = True
    # Ingest fails when cleaning keeps less than this share of a split read from files: a run must not train on nothing.
    min_kept: float = Field(default=0.5, ge=0.0, le=1.0)


class IngestConfig(_Section):
    src_lang: str = Field(default="en", pattern=NAME_PATTERN)
    tgt_lang: str = Field(default="de", pattern=NAME_PATTERN)
    # The data's name: with the languages, the task a registered model holds (s2s.task), and part of its default name.
    dataset: str | None = Field(default=None, pattern=NAME_PATTERN)
    corpus: Literal["builtin", "files"] = "builtin"
    builtin: BuiltinSource = BuiltinSource()
    files: FilesSource | None = None
    holdout: HoldoutConfig = HoldoutConfig()
    seed: int = 1
    clean: CleanConfig = CleanConfig()

    @model_validator(mode="after")
    def _files_given(self) -> IngestConfig:
        if self.corpus == "files" and self.files is None:
            raise ValueError("corpus is 'files' but the `files` section is missing")
        return self


# ------------------------------------------------------------------------ tokenizer


class TokenizerConfig(_Section):
    model_type: Literal["unigram", "bpe"] = "bpe"
    vocab_size: int = Field(default=1000, ge=16)
    joint: bool = True
    character_coverage: float = Field(default=1.0, gt=0.0, le=1.0)
    max_sentences: int = Field(default=200000, ge=100)
    seed: int = 1


# ---------------------------------------------------------------------------- model


# Values of `model.rnn.attention` before the decoders followed their papers, and what replaced them.
_RENAMED_ATTENTION = {
    "none": "the context vector alone is now `decoder: sutskever` (or `cho`, which feeds it to every step)",
    "additive": "Bahdanau's attention is now `decoder: bahdanau`; Luong's placement of that score is `attention: concat`",
}


class RNNConfig(_Section):
    cell: Literal["lstm", "gru"] = "lstm"
    emb_dim: int = Field(default=128, ge=1)
    hidden: int = Field(default=256, ge=1)
    layers: int = Field(default=1, ge=1)
    bidirectional: bool = True
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    decoder: Literal["sutskever", "cho", "bahdanau", "luong"] = "luong"
    attention: Literal["dot", "general", "concat"] = "general"  # Luong's score; Bahdanau's is additive by definition
    input_feeding: bool = True  # Luong: the previous attentional state joins the step's input
    reverse_source: bool = False  # Sutskever: read the source backwards (any decoder)
    maxout: bool = False  # Cho / Bahdanau: maxout (pool 2) in the deep output layer instead of tanh

    @field_validator("attention", mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        if value in _RENAMED_ATTENTION:
            raise ValueError(f"{value!r} is no longer an attention: {_RENAMED_ATTENTION[value]}")
        return value


class TransformerConfig(_Section):
    d_model: int = Field(default=256, ge=8)
    heads: int = Field(default=4, ge=1)
    encoder_layers: int = Field(default=3, ge=1)
    decoder_layers: int = Field(default=3, ge=1)
    ff: int = Field(default=1024, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    activation_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = Field(default=512, ge=16)
    tie_output: bool = True
    share_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class ModelConfig(_Section):
    arch: Literal["rnn", "transformer"] = "rnn"
    rnn: RNNConfig = RNNConfig()
    transformer: TransformerConfig = TransformerConfig()
    # Copy attention (pointer-generator, s2s.models.copy): outputs may copy source subwords; a joint vocabulary and a
    # Transformer (whose decoder hands out its features) are needed, and CTranslate2 has no equivalent to export to.
    copy_attention: bool = False

    @model_validator(mode="after")
    def _copy_arch(self) -> ModelConfig:
        if self.copy_attention and self.arch != "transformer":
            raise ValueError(f"copy_attention: true needs arch: transformer (arch is {self.arch!r})")
        return self


# ---------------------------------------------------------------------------- train


class DistributedConfig(_Section):
    """Data-parallel training launched by `torchrun` (one process, the default, needs none of this)."""

    nproc_per_node: int | Literal["auto"] = 1  # processes on this machine; auto: one per visible GPU (1 without a GPU)
    nnodes: int = Field(default=1, ge=1)  # machines taking part
    node_rank: int = Field(default=0, ge=0)  # this machine's index; node 0 hosts rank 0, which writes every output
    rdzv_endpoint: str | None = None  # host:port on node 0 where the machines meet (needed with nnodes > 1)

    @field_validator("nproc_per_node")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value

    @model_validator(mode="after")
    def _nodes(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be below nnodes ({self.nnodes})")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0)")
        if self.rdzv_endpoint and not re.fullmatch(r"[^\s:]+:\d{1,5}", self.rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint must be host:port (got {self.rdzv_endpoint!r})")
        return self


MallocMode = Literal["auto", "keep", "system"]  # train.malloc: see s2s.allocator


AmpMode = Literal["auto", "off", "bf16"]  # train.amp; s2s.precision decides what each means on a machine


class TrainConfig(_Section):
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = Field(default=3, ge=1)
    batch_tokens: int = Field(default=2000, ge=16)
    lr: float = Field(default=3e-3, gt=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "inverse_sqrt", "cosine"] = "constant"
    adam_betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    adam_kernel: Literal["auto", "loop", "foreach", "fused"] = "auto"  # PyTorch's Adam implementation; auto: its own pick
    malloc: MallocMode = "auto"  # s2s.allocator; auto: keep on CPU, system on CUDA
    clip: float = Field(default=1.0, gt=0.0)
    teacher_forcing: float = Field(default=1.0, ge=0.0, le=1.0)
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    valid_bleu_sentences: int = Field(default=500, ge=1)
    select_metric: MetricName = "bleu"  # on the validation sentences; picks the checkpoint kept and drives patience
    max_tokens: int = Field(default=128, ge=2)
    # A training source longer than max_tokens subwords: drop the pair, or truncate the source (documents); a long
    # target always drops the pair.
    long_sources: Literal["drop", "truncate"] = "drop"
    threads: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=200, ge=0)
    patience: int = Field(default=0, ge=0)
    max_minutes: float = Field(default=0.0, ge=0.0)
    average_last: int = Field(default=0, ge=0)
    amp: AmpMode = "auto"  # s2s.precision: auto is bf16 where the GPU or CPU multiplies it natively, else float32
    compile: bool = False
    accumulate: int = Field(default=1, ge=1)
    distributed: DistributedConfig = DistributedConfig()


# ------------------------------------------------------------------------- evaluate


class DecodingConfig(_Section):
    """How a model decodes: the evaluate stage, a registered model's default, serving, CTranslate2 and translate."""

    # What a request (serving, `s2s translate`) may set, and its type; n_best is a request's only, not a config key.
    REQUEST_OPTIONS: ClassVar[dict[str, type]] = {
        "beam_size": int, "n_best": int, "length_penalty": float, "max_len_a": float, "max_len_b": int,
        "min_len": int, "no_repeat_ngram": int,
    }  # fmt: skip

    beam_size: int = Field(default=1, ge=1)
    batch_size: int = Field(default=128, ge=1)
    # A batch also holds at most this many source subwords x beam: memory stays bounded on long sources.
    batch_tokens: int = Field(default=40000, ge=1)
    max_len_a: float = Field(default=1.5, ge=0.0)  # 0: the limit is max_len_b alone (summaries)
    max_len_b: int = Field(default=10, ge=0)
    min_len: int = Field(default=0, ge=0)  # no EOS before this many output subwords
    no_repeat_ngram: int = Field(default=0, ge=0)  # no n-gram of this many subwords twice in an output (fairseq's); 0 off
    length_penalty: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _some_output(self) -> DecodingConfig:
        if self.max_len_a == 0 and self.max_len_b == 0:
            raise ValueError("max_len_a and max_len_b are both 0: no output could be generated")
        return self

    def decoding(self) -> DecodingConfig:
        """The decoding keys alone (of an EvaluateConfig too): what a registered model decodes with."""
        return DecodingConfig(**{key: getattr(self, key) for key in DecodingConfig.model_fields})

    def beam_for(self, n_best: int) -> int:
        """The beam that returns `n_best` hypotheses: never narrower than the number asked for."""
        return max(self.beam_size, n_best)

    @property
    def decoding_name(self) -> str:
        """This config's decoding as `evaluate.also` names one: greedy, beam5, ..."""
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"


class EvaluateConfig(DecodingConfig):
    # The keys that validation during training decodes (greedily) and scores with; the train stage depends on these only.
    VALIDATION_KEYS: ClassVar[tuple[str, ...]] = (
        "batch_size", "batch_tokens", "max_len_a", "max_len_b", "min_len", "no_repeat_ngram",
        "references", "rouge_multi", "rouge_stemmer",
    )  # fmt: skip

    # What outputs are scored against: `given` the references the data names (ingest fields.references; the target
    # where it names none), or `target` alone. Validation, evaluation and the gate all use this one set.
    references: Literal["given", "target"] = "given"
    rouge_multi: RougeMulti = "best"
    rouge_stemmer: bool = False  # rouge-score's Porter stemmer (English)
    attention_maps: int = Field(default=4, ge=0)
    # Other decodings to score too (`greedy`, `beam5`, ...), beside the one above, which the model is registered and
    # served with and which the gate uses; each differs in beam size only.
    also: tuple[Annotated[str, Field(pattern=r"^(greedy|beam([2-9]|[1-9][0-9]+))$")], ...] = ()

    def for_validation(self) -> EvaluateConfig:
        """Greedy decoding with this config's VALIDATION_KEYS, everything else at its default."""
        return EvaluateConfig(**{key: getattr(self, key) for key in self.VALIDATION_KEYS})

    def also_decodings(self) -> dict[str, EvaluateConfig]:
        """name -> config for each of `also` other than this config's own decoding, in the order given."""
        beams = {name: 1 if name == "greedy" else int(name[len("beam") :]) for name in self.also}
        return {
            name: self.model_copy(update={"beam_size": beam, "also": ()})
            for name, beam in beams.items()
            if name != self.decoding_name
        }


# -------------------------------------------------- orchestration (not a DVC stage)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class RegistryConfig(_Section):
    model_name: str | None = Field(default=None, min_length=1)  # None: the task's default name (s2s.task)
    # None: MLflow's own MLFLOW_TRACKING_URI if set (a team's server), else DEFAULT_TRACKING_URI in the workspace.
    tracking_uri: str | None = None
    artifact_root: str = "mlartifacts"
    experiment: str = "s2s"
    ui_url: str = "http://127.0.0.1:5000"

    @property
    def name(self) -> str:
        """The registered model's name; the flow and the CLI fill a None in from the data (s2s.task.resolve_registry)."""
        if not self.model_name:
            raise ConfigError("registry.model_name is not resolved: use s2s.task.resolve_registry(params)")
        return self.model_name


# CTranslate2 weight types `s2s export` writes; the float16/bfloat16 ones compute in that type on CUDA only.
Quantization = Literal["float32", "int8", "int8_float32", "float16", "bfloat16", "int8_float16", "int8_bfloat16"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)


class PromoteConfig(_Section):
    enabled: bool = True
    metric: MetricName = "bleu"
    margin: float = Field(default=0.0, ge=0.0)
    min_score: float = Field(default=0.0, ge=0.0)  # metrics where higher is better
    max_score: float | None = Field(default=None, ge=0.0)  # metrics where lower is better (TER)
    export: Quantization | None = None  # a new champion (Transformer) is also registered converted to CTranslate2

    @property
    def bound(self) -> float | None:
        """The configured bound of the metric's direction: min_score where higher is better, else max_score."""
        return self.min_score if metric(self.metric).higher_is_better else self.max_score

    @model_validator(mode="after")
    def _bound_fits_metric(self) -> PromoteConfig:
        if metric(self.metric).higher_is_better and self.max_score is not None:
            raise ValueError(f"max_score bounds metrics where lower is better; {self.metric}: use min_score")
        if not metric(self.metric).higher_is_better and self.min_score:
            raise ValueError(f"min_score bounds metrics where higher is better; {self.metric} is lower-better: use max_score")
        return self


class RemoteConfig(_Section):
    # Which remote, and where, is DVC's own configuration (.dvc/config, `dvc remote`); this only says whether to push.
    push: bool = True


class Params(_Section):
    ingest: IngestConfig = IngestConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    promote: PromoteConfig = PromoteConfig()
    remote: RemoteConfig = RemoteConfig()

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        # An empty YAML section (`train:` with only comments) parses to None.
        return {} if value is None else value

    @model_validator(mode="after")
    def _export_needs_plain_transformer(self) -> Params:
        if self.promote.export is not None and self.model.copy_attention:
            raise ValueError("promote.export: a model with copy_attention: true has no CTranslate2 equivalent; unset one of them")
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at the parent of `loc`, to put in an unknown-key error."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        current = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def format_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            lines.append(f"  {key}: unknown key{hint}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, Params, source)) from None


def read_yaml(path: Path, what: str, error: type[S2SError] = ConfigError) -> Any:
    """The YAML document in `path`; a missing file or bad YAML is `error`, naming the file as `what`."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every problem is reported with its key."""
    path = Path(path)
    return parse_params(read_yaml(path, "params file"), str(path))
