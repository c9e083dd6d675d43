"""`dvc.yaml` says what `s2s.layout` says, and each stage's deps cover the code it runs (from the import graph)."""

from __future__ import annotations

import ast
import shlex
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from s2s import layout
from s2s.config import Params

REPO = Path(__file__).resolve().parent.parent
OWN_PACKAGES = ("s2s", "flows")


def module_file(name: str) -> Path | None:
    """The file that importing `name` executes, if it is one of ours."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_chain(name: str) -> list[str]:
    """`a.b.c` runs `a`, `a.b` and `a.b.c` (each package's __init__ first)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module an import statement anywhere in the file may load (lazy imports inside functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {n for n in names if n.split(".")[0] in OWN_PACKAGES}


@cache
def closure(entry: str) -> frozenset[str]:
    """Repository-relative files of our modules that `python -m entry` imports, directly or not."""
    seen: set[str] = set()
    todo = _package_chain(entry)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        for imported in _imported_names(path, name):
            todo.extend(_package_chain(imported))
    return frozenset(module_file(n).relative_to(REPO).as_posix() for n in seen)  # type: ignore[union-attr]


def dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / layout.DVC_FILE).read_text())


def expand(deps: list[str]) -> tuple[set[str], set[str]]:
    """(code files, data paths) of a stage's deps; a code folder stands for its .py files."""
    code: set[str] = set()
    data: set[str] = set()
    for dep in deps:
        path = REPO / dep
        if dep.split("/")[0] in OWN_PACKAGES:
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            code.update(f.relative_to(REPO).as_posix() for f in files)
        else:
            data.add(dep)
    return code, data


def _paths(entries: list[Any]) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_dvc_yaml_has_the_layouts_stages_in_order() -> None:
    assert list(dvc_yaml()["stages"]) == list(layout.STAGE_NAMES)


@pytest.mark.parametrize("stage", layout.STAGES, ids=lambda s: s.name)
def test_dvc_yaml_stage_matches_the_layout(stage: layout.Stage) -> None:
    spec = dvc_yaml()["stages"][stage.name]
    assert shlex.split(spec["cmd"]) == shlex.split(stage.cmd)
    assert spec.get("params", []) == list(stage.params)
    assert _paths(spec.get("outs", [])) == list(stage.outs)
    assert _paths(spec.get("metrics", [])) == list(stage.metrics)
    assert _paths(spec.get("plots", [])) == list(stage.plots)
    # Metrics and plots are small files kept in git next to dvc.lock, not in the DVC cache.
    for entry in spec.get("metrics", []) + spec.get("plots", []):
        assert isinstance(entry, dict) and next(iter(entry.values())) == {"cache": False}, entry


@pytest.mark.parametrize("stage", layout.STAGES, ids=lambda s: s.name)
def test_stage_deps_cover_exactly_the_code_it_imports(stage: layout.Stage) -> None:
    code, data = expand(dvc_yaml()["stages"][stage.name]["deps"])
    imported = closure(stage.module)
    missing, extra = sorted(imported - code), sorted(code - imported)
    assert not missing, f"dvc.yaml stage {stage.name!r} runs these modules but does not list them as deps: {missing}"
    # An extra dep reruns the stage for code it never runs (hours of training for an unrelated edit).
    assert not extra, f"dvc.yaml stage {stage.name!r} lists deps it never imports: {extra}"
    assert data == set(stage.inputs)


def test_the_import_graph_walker_sees_lazy_and_package_imports() -> None:
    """The check above is only as good as the walker: spot-check what it must find."""
    train = closure("s2s.stages.train")
    assert {"s2s/__init__.py", "s2s/stages/__init__.py", "s2s/models/__init__.py", "s2s/models/transformer.py"} <= train
    assert "s2s/plots.py" in closure("s2s.stages.evaluate")  # imported inside a function
    assert "s2s/registry.py" not in train and not any(f.startswith("flows/") for f in train)


def test_params_yaml_defaults_are_the_configs() -> None:
    """One source of defaults: the typed config. params.yaml spells every one of them out, unchanged."""
    written = yaml.safe_load((REPO / layout.PARAMS_FILE).read_text())
    assert written == Params().model_dump(mode="json")


def test_every_declared_param_exists() -> None:
    defaults = Params().model_dump()
    for stage in layout.STAGES:
        for key in stage.params:
            node: Any = defaults
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {stage.name}: no param {key!r}"
                node = node[part]


def test_lock_view_merges_stage_params_and_outs() -> None:
    train = {
        "params": {"params.yaml": {"train": {"epochs": 2, "device": "cpu"}, "evaluate.max_len_b": 7}},
        "outs": [{"path": "artifacts/model", "md5": "abc.dir"}],
    }
    evaluate = {"params": {"params.yaml": {"train.device": "cpu", "evaluate": {"beam_size": 5}}}}
    lock = {"stages": {"train": train, "evaluate": evaluate}}
    view = layout.LockView.from_lock(lock)
    assert view.params == {"train": {"epochs": 2, "device": "cpu"}, "evaluate": {"max_len_b": 7, "beam_size": 5}}
    assert view.outs == {"artifacts/model": "abc.dir"}


def test_prepared_data_round_trip_and_errors(tmp_path: Path) -> None:
    splits = {"train": [("a b", "c d"), ("e", "f")], "valid": [("g", "h")], "test": [("i", "j")]}
    layout.write_prepared(splits, tmp_path / "prepared")
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == sorted(f"{s}.{x}" for s in splits for x in layout.SIDES)
    assert layout.read_prepared(tmp_path / "prepared", "train") == splits["train"]
    (tmp_path / "prepared" / "test.tgt").write_text("j\nextra\n")
    with pytest.raises(layout.PreparedDataError, match=r"test\.src has 1 lines but .*test\.tgt has 2"):
        layout.read_prepared(tmp_path / "prepared", "test")
    with pytest.raises(layout.PreparedDataError, match=r"nowhere/valid\.src: prepared split not found; run the ingest stage"):
        layout.read_prepared(tmp_path / "nowhere", "valid")


def test_examples_keep_their_references_and_ids_and_texts_with_unusual_separators(tmp_path: Path) -> None:
    test = [layout.Example("a\u2028b \r c", "t1", ("r1", "r2"), "id-1"), layout.Example("d", "t2", ("r3", "r4"), "id-2")]
    layout.write_prepared({"train": [("x", "y")], "test": test}, tmp_path / "prepared")
    assert layout.read_examples(tmp_path / "prepared", "test") == test  # a U+2028 or a CR inside a text is not a line break
    assert layout.read_examples(tmp_path / "prepared", "train") == [layout.Example("x", "y")]
    assert test[0].references() == ["r1", "r2"] and test[0].references("target") == ["t1"]
    assert layout.Example("x", "y").references() == ["y"]  # no further references: the target is the reference
    (tmp_path / "prepared" / "test.ref1").write_text("r2\n")
    with pytest.raises(layout.PreparedDataError, match=r"test\.ref1 has 1 lines but .*test\.src has 2"):
        layout.read_examples(tmp_path / "prepared", "test")
    with pytest.raises(layout.PreparedDataError, match=r"test: items differ in their number of references \(\[0, 2\]\)"):
        layout.write_prepared({"test": [*test, layout.Example("e", "f")]}, tmp_path / "other")


def test_dvc_yaml_plots_read_the_train_curve() -> None:
    for plot in dvc_yaml()["plots"]:
        (spec,) = plot.values()
        assert set(spec["y"]) == {layout.TRAIN_CURVE}


@pytest.fixture(scope="module")
def locked_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose dvc.lock records placeholder outputs: `dvc commit` hashes deps and outs without running
    anything, which is all a test of the deps needs."""
    from s2s.workspace import make_workspace, run

    ws = make_workspace(tmp_path_factory.mktemp("layout") / "ws", {})
    for stage in layout.STAGES:
        for out in (*stage.outs, *stage.metrics, *stage.plots):
            path = ws / out if Path(out).suffix else ws / out / "placeholder"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{out}\n")
    run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet"], ws)
    return ws


@pytest.mark.parametrize("stage", layout.STAGES, ids=lambda s: s.name)
def test_whitespace_change_to_an_imported_module_makes_dvc_rerun_that_stage_and_what_follows(
    locked_workspace: Path, stage: layout.Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import networkx as nx
    from dvc.repo import Repo

    monkeypatch.chdir(locked_workspace)  # DVC's Python API works relative to the current directory
    with Repo(str(locked_workspace)) as repo:
        assert repo.status() == {}
    order = list(layout.STAGE_NAMES)
    for module in sorted(closure(stage.module)):
        path = locked_workspace / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        try:
            with Repo(str(locked_workspace)) as repo:
                changed = set(repo.status())
                first = min(changed, key=order.index, default=None)
                # DVC's DAG: what `dvc repro` re-checks after `first` (edges point from a stage to what it needs).
                nodes = {s.addressing: s for s in repo.index.graph.nodes}
                follows = {s.addressing for s in nx.ancestors(repo.index.graph, nodes[first])} if first else set()
        finally:
            path.write_bytes(original)
        importers = {s.name for s in layout.STAGES if module in closure(s.module)}
        # Exactly the stages that run this module see the change (so nothing before the first of them) ...
        assert changed == importers, f"{module}: dvc status reports {sorted(changed)}, expected {sorted(importers)}"
        assert stage.name in changed
        # ... and every stage after it depends on it, so a changed output reruns them in turn.
        assert follows == set(order[order.index(first) + 1 :]), module


def test_run_outputs_are_not_committed_here() -> None:
    """dvc.lock and the metrics describe a run of a workspace, not this code: this repository commits none (README,
    "Lineage you can trust"); a project built on it commits its own after each run."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", layout.LOCK_FILE, "metrics"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert tracked.stdout.split() == []


@pytest.mark.parametrize("out", [o for s in layout.STAGES for o in s.outs])
def test_every_cached_output_is_already_git_ignored(out: str) -> None:
    """DVC adds an output to its folder's .gitignore when it runs: a line missing here would leave a checkout dirty
    after `make run`, and every version registered after that would be tagged git.dirty."""
    folder, name = out.rsplit("/", 1)
    assert f"/{name}" in (REPO / folder / ".gitignore").read_text().splitlines()
