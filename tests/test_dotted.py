"""s2s/dotted.py: nested parameter trees and their dotted keys."""

from __future__ import annotations

import pytest

from s2s import dotted

TREE = {"train": {"lr": 0.1, "distributed": {"nproc_per_node": 2}}, "model": {}, "seed": 1}


def test_flatten_get_and_with_value() -> None:
    assert dotted.flatten(TREE) == {"train.lr": 0.1, "train.distributed.nproc_per_node": 2, "seed": 1}
    assert dotted.get(TREE, "train.distributed.nproc_per_node") == 2
    with pytest.raises(KeyError, match="train.clip"):
        dotted.get(TREE, "train.clip")
    changed = dotted.with_value(TREE, "train.distributed.nnodes", 3)
    assert changed["train"]["distributed"] == {"nproc_per_node": 2, "nnodes": 3} and "nnodes" not in TREE["train"]["distributed"]


def test_merges_keep_what_the_update_does_not_name() -> None:
    assert dotted.deep_merge(TREE, {"train": {"lr": 0.2}})["train"] == {"lr": 0.2, "distributed": {"nproc_per_node": 2}}
    tree: dict[str, object] = {"train": {"lr": 0.1, "seed": 3}}
    dotted.merge_at(tree, "train.device", "cpu")
    dotted.merge_at(tree, "train", {"lr": 0.5})
    assert tree == {"train": {"lr": 0.5, "seed": 3, "device": "cpu"}}
    node, leaf = dotted.parent(TREE, "train.distributed.nproc_per_node")
    assert node is TREE["train"]["distributed"] and leaf == "nproc_per_node"
