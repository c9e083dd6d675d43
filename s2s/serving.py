"""Serving a translator to many clients: per-request decoding options, bounds on a request's work, and batching.

Knows nothing of MLflow: the registered model (s2s.registry.S2SPyfunc) uses
these, as could any other server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError

from s2s.config import DecodingConfig, format_validation_error

# Decoding options a registered model takes per request (MLflow inference params); each defaults to how the version was
# registered to decode, which is how the evaluate stage scored it (n_best: 1).
DECODING_OPTIONS = DecodingConfig.REQUEST_OPTIONS


class RequestError(ValueError):
    """A request the model refuses; the message names the option or input at fault."""


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one request's work, so one client cannot starve the others; 0 lifts a bound.

    Read from the environment of the process that loads the model (`S2S_MAX_SENTENCES=5000 mlflow models serve ...`).
    """

    max_sentences: int = 1000  # per request: ~20 s of beam-5 PyTorch decoding on 2 cores, inside MLflow's 60 s timeout
    # per input: the engines read only a model's first max_source_tokens subwords, so this bounds tokenizing alone.
    # AESLC's longest email body is 39,001 characters (its 99th percentile 5,448); Multi30k's longest sentence ~300.
    max_chars: int = 50_000
    max_beam: int = 16  # beam_size and n_best

    ENV: ClassVar[dict[str, str]] = {
        "max_sentences": "S2S_MAX_SENTENCES", "max_chars": "S2S_MAX_CHARS", "max_beam": "S2S_MAX_BEAM"
    }  # fmt: skip

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServeLimits:
        values: dict[str, int] = {}
        for name, variable in cls.ENV.items():
            raw = environ.get(variable)
            if raw is None:
                continue
            if not raw.strip().isdigit():
                raise ValueError(f"{variable}={raw!r}: expected a whole number >= 0 (0: no limit)")
            values[name] = int(raw)
        return cls(**values)

    def check(self, sources: list[str], beam_size: int, n_best: int) -> None:
        if self.max_sentences and len(sources) > self.max_sentences:
            raise RequestError(f"{len(sources)} sentences in one request; at most {self.max_sentences} "
                               f"({self.ENV['max_sentences']}): split the request")  # fmt: skip
        for i, source in enumerate(sources):  # strings: MLflow checks them against predict's type hint first
            if self.max_chars and len(source) > self.max_chars:
                raise RequestError(f"input {i} has {len(source)} characters; at most {self.max_chars} per input "
                                   f"({self.ENV['max_chars']})")  # fmt: skip
        for name, value in (("beam_size", beam_size), ("n_best", n_best)):
            if self.max_beam and value > self.max_beam:
                raise RequestError(f"{name}: {value} is above this server's maximum of {self.max_beam} ({self.ENV['max_beam']})")


def decoding_with(registered: DecodingConfig, options: dict[str, Any] | None) -> tuple[DecodingConfig, int]:
    """The registered decoding settings with a request's options applied, and n_best; a bad option is an error."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(DECODING_OPTIONS))
    if unknown:
        raise RequestError(f"unknown decoding option(s) {', '.join(unknown)}; accepted: {', '.join(DECODING_OPTIONS)}")
    n_best = given.pop("n_best", 1)
    if isinstance(n_best, bool) or not isinstance(n_best, int) or n_best < 1:
        raise RequestError(f"n_best: expected a whole number >= 1, got {n_best!r}")
    try:
        cfg = DecodingConfig.model_validate({**registered.decoding().model_dump(), **given})
    except ValidationError as err:
        raise RequestError(format_validation_error(err, DecodingConfig, "decoding options")) from None
    return cfg.model_copy(update={"beam_size": cfg.beam_for(n_best)}), n_best


@dataclass
class _Request:
    key: tuple[DecodingConfig, int]
    sources: list[str]
    done: bool = False
    result: list[Any] = field(default_factory=list)
    error: BaseException | None = None


class RequestBatcher:
    """Decodes concurrent requests that share decoding options as one batch, one batch at a time.

    A request joins the queue, then waits for the decoder. Whoever gets it
    takes every queued request with the same options, decodes their sentences
    together (the engine sorts them by length) and hands each its share; the
    others find their answer done. Under load the batches grow on their own;
    alone, a request is decoded at once. One batch at a time, because one
    batch already spreads over every core.
    """

    def __init__(self, decode: Callable[[list[str], DecodingConfig, int], list[Any]]) -> None:
        self.decode = decode
        self.queue: list[_Request] = []
        self.queue_lock, self.decoder = threading.Lock(), threading.Lock()

    def __call__(self, sources: list[str], cfg: DecodingConfig, n_best: int) -> list[Any]:
        request = _Request((cfg, n_best), sources)
        with self.queue_lock:
            self.queue.append(request)
        with self.decoder:
            if not request.done:
                with self.queue_lock:
                    batch = [r for r in self.queue if r.key == request.key]
                    self.queue = [r for r in self.queue if r.key != request.key]
                self._run(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _run(self, batch: list[_Request]) -> None:
        cfg, n_best = batch[0].key
        try:
            results = self.decode([s for r in batch for s in r.sources], cfg, n_best)
        except Exception as err:  # every request of the batch gets the error, not just the one that ran it
            for r in batch:
                r.error, r.done = err, True
            return
        start = 0
        for r in batch:
            r.result, r.done = results[start : start + len(r.sources)], True
            start += len(r.sources)
