"""Presets: partial params files in presets/, each a tested recipe or a dataset, applied over params.yaml.

A preset holds only the sections it is about (a recipe: tokenizer, model, train, evaluate; a dataset: ingest),
so the rest of the user's params.yaml (their own data, registry, gate) stays. Presets given together apply in
order over params.yaml: a later one wins a key they share. Applying rewrites params.yaml in place, comments kept,
and names every value it changed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from s2s import dotted, machine
from s2s.config import ConfigError, parse_params
from s2s.errors import S2SError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
# The recipe a newcomer should take on each kind of machine: the best measured there (BENCHMARKS.md).
START_WITH = {"a CPU": "transformer-cpu", "a GPU": "transformer-gpu"}
# NAME-amx is NAME re-tuned for a CPU with bf16 matrix units (s2s.machine.bf16_units), where `train.amp: auto`
# trains in bf16 and the same minutes hold more updates: `--preset NAME` takes it on such a CPU.
BF16_VARIANT = "-amx"


class PresetError(S2SError, ValueError):
    pass


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    summary: str  # the file's first comment line after "# NAME: "
    values: dict[str, Any]
    instead_of: str = ""  # the name asked for, where this machine's variant of it was taken (for_this_machine)


def read(path: Path) -> Preset:
    text = path.read_text(encoding="utf-8")
    first = next((line for line in text.splitlines() if line.startswith("#")), "#")
    summary = first.lstrip("# ").split(": ", 1)[-1].strip()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise PresetError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise PresetError(f"{path}: a preset is a mapping of params sections")
    try:
        parse_params(values, str(path))  # unknown keys and bad values named now, not after a merge
    except ConfigError as err:
        raise PresetError(str(err)) from None
    return Preset(path.stem, path, summary, values)


def available() -> list[Preset]:
    return [read(path) for path in sorted(PRESETS_DIR.glob("*.yaml"), key=lambda path: path.stem)]  # NAME before NAME-amx


def find(name: str) -> Preset:
    """A preset by name (presets/NAME.yaml) or by the path of a params file."""
    given = Path(name)
    path = given if given.suffix in (".yaml", ".yml") else PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(PRESETS_DIR.glob("*.yaml")))
        raise PresetError(f"no preset {name!r}; available: {names} (or a path to a params file; `s2s presets` describes them)")
    return read(path)


def for_this_machine(name: str, flags: frozenset[str] | None = None) -> Preset:
    """What `--preset name` means on this CPU (`flags`: its own by default): NAME-amx where the CPU has bf16 matrix
    units and that variant exists, else `find(name)`. A path is always the file it names."""
    variant = PRESETS_DIR / f"{name}{BF16_VARIANT}.yaml"
    if Path(name).suffix not in (".yaml", ".yml") and variant.is_file() and machine.bf16_units(flags):
        return replace(read(variant), instead_of=name)
    return find(name)


# Replaced whole, not merged key by key: a dataset's files are one unit (a user's tsv plus a preset's src/tgt is no split).
WHOLE = {("ingest", "files")}


def _merge_into(node: Any, update: dict[str, Any], at: tuple[str, ...] = ()) -> None:
    """Set `update`'s values in a round-trip YAML mapping, keeping its comments and key order."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(node.get(key), dict) and (*at, key) not in WHOLE:
            _merge_into(node[key], value, (*at, key))
        else:
            node[key] = value


def apply(params_file: Path, presets: list[Preset]) -> list[str]:
    """Apply `presets` in order over `params_file`; returns the changed keys as 'key: old -> new'.

    The result is validated before the file is written: a failure leaves params.yaml as it was.
    """
    rt = YAML()  # round trip: the user's comments and layout survive
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = rt.load(params_file.read_text(encoding="utf-8")) or {}
    before = dotted.flatten(yaml.safe_load(params_file.read_text(encoding="utf-8")) or {})
    for preset in presets:  # read round trip too: a quoted "off" stays quoted (YAML 1.1 readers take off for false)
        _merge_into(document, rt.load(preset.path.read_text(encoding="utf-8")) or {})
    buffer = io.StringIO()
    rt.dump(document, buffer)
    text = buffer.getvalue()
    merged = yaml.safe_load(text)
    try:
        parse_params(merged, f"{params_file} with preset(s) {', '.join(p.name for p in presets)}")
    except ConfigError as err:
        raise PresetError(str(err)) from None
    after = dotted.flatten(merged)
    changed = [f"{key}: {before.get(key, '(unset)')!r} -> {after[key]!r}" for key in after if before.get(key) != after[key]]
    if changed:
        params_file.write_text(text, encoding="utf-8")
    return changed
