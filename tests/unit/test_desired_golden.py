"""Golden tests: the whole desired state built from realistic API objects, compared as JSON.

Each case reads ``golden/<input>.yaml`` (a stream of API objects) and compares
``to_jsonable(build_desired_state(...))`` with ``golden/<case>.json``.

To regenerate the expected files after an intended change, run

    KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_desired_golden.py

and review the diff of ``tests/unit/golden/*.json`` before committing it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from kr_core.desired import build_desired_state
from kr_core.model import to_jsonable

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KR_UPDATE_GOLDEN") == "1"
KINDS = {
    "Node": "nodes",
    "Service": "services",
    "EndpointSlice": "endpointslices",
    "Pod": "pods",
    "Namespace": "namespaces",
    "NetworkPolicy": "networkpolicies",
}


def snapshot_of(objects: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """A cache snapshot (kind -> key -> object) holding only the kinds present in ``objects``."""
    snapshot: dict[str, dict[str, Mapping[str, Any]]] = {}
    for obj in objects:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        snapshot.setdefault(KINDS[obj["kind"]], {})[key] = obj
    return snapshot


# (expected file stem, input file stem, node name, proxy name)
CASES = [
    ("services", "services", "node-a", None),
    ("policy", "policy", "node-a", None),
    ("proxy_name-none", "proxy_name", "node-a", None),
    ("proxy_name-kr", "proxy_name", "node-a", "kr"),
]


@pytest.mark.parametrize(("case", "source", "node_name", "proxy_name"), CASES, ids=[c[0] for c in CASES])
def test_golden(
    case: str, source: str, node_name: str, proxy_name: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with open(GOLDEN / f"{source}.yaml", encoding="utf-8") as stream:
        objects = [doc for doc in yaml.safe_load_all(stream) if doc]
    with caplog.at_level(logging.WARNING, logger="kr_core.desired"):
        actual = to_jsonable(build_desired_state(snapshot_of(objects), node_name, proxy_name))
    # The fixtures are well-formed: every exclusion in them is deliberate, never a warning.
    assert caplog.records == []
    # Round-trip through JSON so the comparison sees exactly what the file holds.
    actual = json.loads(json.dumps(actual))
    expected_path = GOLDEN / f"{case}.json"
    if UPDATE:
        expected_path.write_text(json.dumps(actual, indent=2) + "\n", encoding="utf-8")
    assert actual == json.loads(expected_path.read_text(encoding="utf-8"))
