"""Presets (s2s/presets.py): tested recipes and datasets applied over params.yaml, comments kept, changes named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support import REPO

from benchmarks.multi30k import AMX_RECIPE, ARCHS, GPU_RECIPE
from flows.cli import main
from s2s import presets
from s2s.config import load_params

OWN_DATA = """\
# my params: own data, my registry name
ingest:
  corpus: files               # my own files
  files:
    train: {tsv: data/raw/train.tsv}
registry:
  model_name: my-translator   # keep this name
train:
  lr: 0.01                    # my learning rate
"""


def test_every_preset_is_valid_and_described() -> None:
    found = {p.name: p for p in presets.available()}
    recipes = (*ARCHS, AMX_RECIPE, GPU_RECIPE, "transformer-summary-cpu")
    assert set(found) == {*recipes, "multi30k", "aeslc"}
    assert all(p.summary and not p.summary.startswith("#") for p in found.values())
    assert all("ingest" not in found[name].values for name in recipes)  # a recipe never replaces the user's data
    assert set(found["multi30k"].values) == {"ingest"}  # its name gives the model its name (s2s.task)
    # A dataset may say how its task is scored: the references, the ROUGE convention, the metric that selects and gates.
    aeslc = found["aeslc"].values
    assert set(aeslc) == {"ingest", "evaluate", "train", "promote"}
    assert set(aeslc["evaluate"]) == {"references", "rouge_multi", "rouge_stemmer"} and set(aeslc["train"]) == {"select_metric"}


def test_a_recipe_over_own_data_keeps_the_data_and_the_comments_and_names_each_change(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(OWN_DATA)
    recipe = presets.find("transformer-cpu")
    lr = recipe.values["train"]["lr"]
    changed = presets.apply(params, [recipe])
    assert "model.arch: '(unset)' -> 'transformer'" in changed and f"train.lr: 0.01 -> {lr}" in changed
    text = params.read_text()
    assert "# my params: own data, my registry name" in text and re.search(rf"\n  lr: {lr} +# my learning rate\n", text)
    merged = load_params(params)
    assert merged.ingest.files is not None and merged.ingest.files.train.tsv.path == "data/raw/train.tsv"
    assert merged.registry.model_name == "my-translator" and merged.train.amp == "auto"
    assert merged.model.transformer.d_model == 256 and merged.train.max_minutes == 22
    assert presets.apply(params, [presets.find("transformer-cpu")]) == []  # applied already: nothing to change


def test_later_preset_wins_and_a_bad_combination_leaves_params_untouched(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(OWN_DATA)
    presets.apply(params, [presets.find("multi30k"), presets.find("transformer-gpu"), presets.find("transformer-cpu")])
    merged = load_params(params)
    # The dataset's files replaced the user's as a whole; the cpu recipe, last, won every key the gpu one also set.
    assert merged.ingest.files is not None and merged.ingest.files.train.tsv is None
    # An own registry name stays: the gate refuses a champion of another task under it (s2s.task).
    assert merged.ingest.dataset == "multi30k" and merged.registry.model_name == "my-translator"
    assert merged.train.device == "cpu"
    assert (merged.model.transformer.heads, merged.train.amp, merged.train.compile) == (4, "auto", False)

    params.write_text("model:\n  transformer:\n    d_model: 264       # mine\n    heads: 8\n")
    before = params.read_text()
    heads = tmp_path / "heads.yaml"  # valid alone (256 / 16), not with my d_model: refused once merged, naming the files
    heads.write_text(yaml.safe_dump({"model": {"transformer": {"heads": 16}}}))
    with pytest.raises(presets.PresetError, match=r"(?s)params.yaml with preset\(s\) heads: .*d_model \(264\) must be divisible"):
        presets.apply(params, [presets.find(str(heads))])
    assert params.read_text() == before


def test_s2s_presets_lists_each_with_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    listing, advice = capsys.readouterr().out.split("\n\n")
    lines = listing.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted([*ARCHS, AMX_RECIPE, GPU_RECIPE, "multi30k", "aeslc", "transformer-summary-cpu"])
    cpu = lines[names.index("transformer-cpu")]
    assert "22 minutes on 2 CPU cores" in cpu and cpu.endswith("[tokenizer, model, train, evaluate]")
    # Which one to take is said, and marked: the recipe a newcomer should start with on each kind of machine.
    assert [line.split()[0] for line in lines if line.split()[1] == "*"] == ["transformer-cpu", "transformer-gpu"]
    assert advice.startswith("* new here? start with transformer-cpu on a CPU; transformer-gpu on a GPU")


def test_benchmark_reads_its_recipes_from_the_presets() -> None:
    source = (REPO / "benchmarks" / "multi30k.py").read_text()
    assert '"d_model"' not in source and '"hidden"' not in source  # no recipe values of its own
    for name in (*ARCHS, AMX_RECIPE, GPU_RECIPE):  # every recipe it runs is a preset users can apply, measured at 22 CPU minutes
        values = presets.find(name).values
        assert values["train"]["max_minutes"] == (20 if name == GPU_RECIPE else 22)


def test_a_recipe_name_means_its_bf16_variant_on_a_cpu_with_bf16_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, lr in (("recipe", 0.001), ("recipe-amx", 0.002), ("dataset", 0.003)):
        (tmp_path / f"{name}.yaml").write_text(f"# {name}: a test preset\ntrain:\n  lr: {lr}\n")
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    amx, avx2 = frozenset({"avx2", "amx_tile", "amx_bf16"}), frozenset({"avx2", "fma"})
    taken = presets.for_this_machine("recipe", amx)
    assert (taken.name, taken.instead_of, taken.values["train"]["lr"]) == ("recipe-amx", "recipe", 0.002)
    assert presets.for_this_machine("recipe", frozenset({"avx512f", "avx512_bf16"})).name == "recipe-amx"
    assert (presets.for_this_machine("recipe", avx2).name, presets.for_this_machine("recipe", avx2).instead_of) == ("recipe", "")
    assert presets.for_this_machine("dataset", amx).name == "dataset"  # no variant: the preset itself
    exact = presets.for_this_machine(str(tmp_path / "recipe.yaml"), amx)  # a path is the file it names, on any CPU
    assert (exact.name, exact.instead_of) == ("recipe", "")
