"""Objects from YAML or JSON files: multi-document streams and ``kind: List`` documents.

Invariant: ``load_objects`` returns plain dicts in file order with ``List`` and typed lists
(``PodList`` as an API list returns it, items given their kind) flattened and empty documents skipped;
it does not validate kinds (``Store.apply`` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


def _flatten(documents: Iterable[Any]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ValueError(f"expected an object, got {type(document).__name__}")
        kind = str(document.get("kind", ""))
        if kind.endswith("List") and isinstance(document.get("items"), list):
            # a typed list (PodList) from an API dump: its items carry no kind or apiVersion
            item_type = {"kind": kind.removesuffix("List"), "apiVersion": document.get("apiVersion")}
            items = document["items"] if kind == "List" else [
                {**item_type, **item} if isinstance(item, dict) else item for item in document["items"]
            ]
            objects.extend(_flatten(items))
        else:
            objects.append(document)
    return objects


def load_objects(path: str | Path) -> list[dict[str, Any]]:
    """Every object in a YAML (or JSON, which is YAML) file, ``---``-separated documents included."""
    with open(path, encoding="utf-8") as stream:
        return _flatten(yaml.safe_load_all(stream))
