"""Nested parameter trees (params.yaml as dicts) and their dotted keys (`train.lr`): the one set of helpers for both."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; an empty mapping has no leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, f"{name}.") if isinstance(value, Mapping) else {name: value})
    return out


def get(tree: Mapping[str, Any], key: str) -> Any:
    """The value at dotted `key`; KeyError(key) when a part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def with_value(tree: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `tree` with dotted `key` set to `value` (missing parents created)."""
    head, _, rest = key.partition(".")
    out = dict(tree)
    out[head] = with_value(out.get(head) or {}, rest, value) if rest else value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, mapping by mapping; any other value of `update` replaces base's."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def merge_at(tree: dict[str, Any], key: str, value: Any) -> None:
    """In place: `train.device: cpu` and `train: {...}` both land in tree['train'] (a mapping merges into one)."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = deep_merge(tree[leaf], value) if isinstance(value, Mapping) and isinstance(tree.get(leaf), Mapping) else value


def parent(tree: Any, key: str) -> tuple[Any, str]:
    """The mapping that holds dotted `key`'s leaf, and the leaf's name."""
    *path, leaf = key.split(".")
    for part in path:
        tree = tree[part]
    return tree, leaf
