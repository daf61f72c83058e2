"""``kr_core.trim``: what the watcher drops from API objects must never change what kr builds from them.

Every golden input (tests/unit/golden/*.yaml) and every proxy golden case, made heavier with what real
API servers send (managedFields, the last-applied annotation, targetRefs, container statuses, volumes,
probes) and then trimmed, builds exactly the desired state the plain input builds; and the heavy parts
are really gone.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from kr_core.desired import build_desired_state
from kr_core.model import to_jsonable
from kr_core.trim import LAST_APPLIED, trim

sys.path.insert(0, str(Path(__file__).parents[1] / "proxy"))
sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES as PROXY_CASES
from test_desired_golden import GOLDEN, KINDS, snapshot_of

NODE = "node-a"
MANAGED = [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]


def heavy(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the bulky fields a real API server adds."""
    out = copy.deepcopy(dict(obj))
    meta = out.setdefault("metadata", {})
    meta["managedFields"] = copy.deepcopy(MANAGED)
    meta.setdefault("annotations", {})[LAST_APPLIED] = json.dumps(obj)
    meta.setdefault("resourceVersion", "7")
    if out.get("kind") == "EndpointSlice":
        for index, endpoint in enumerate(out.get("endpoints") or []):
            endpoint["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace"), "name": f"p-{index}",
                                     "uid": "0b6e5f1c-6a55-4d5e-9d47-3b1d0b9a1f00"}
            endpoint["deprecatedTopology"] = {"kubernetes.io/hostname": endpoint.get("nodeName", "")}
    if out.get("kind") == "Pod":
        spec, status = out.setdefault("spec", {}), out.setdefault("status", {})
        spec["volumes"] = [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]
        spec["initContainers"] = [{"name": "init", "image": "busybox", "ports": [{"name": "init", "containerPort": 1}]}]
        for container in spec.get("containers") or []:
            container.update(image="registry/app:1", env=[{"name": "A", "value": "1"}],
                             readinessProbe={"httpGet": {"path": "/", "port": 80}}, resources={"limits": {"cpu": "1"}})
        status["containerStatuses"] = [{"name": "app", "ready": True, "restartCount": 0, "image": "registry/app:1"}]
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    return out


def trimmed(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [trim(KINDS[obj["kind"]], copy.deepcopy(dict(obj))) for obj in objects]


def built(objects: Iterable[Mapping[str, Any]], proxy_name: str | None = None) -> Any:
    return to_jsonable(build_desired_state(snapshot_of(objects), NODE, proxy_name))


GOLDEN_INPUTS = sorted(GOLDEN.glob("*.yaml"))


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=[p.stem for p in GOLDEN_INPUTS])
def test_golden_inputs_build_the_same_desired_state_trimmed(path: Path) -> None:
    plain = [o for o in yaml.safe_load_all(path.read_text(encoding="utf-8")) if o]
    for proxy_name in (None, "kr"):
        assert built(trimmed(heavy(o) for o in plain), proxy_name) == built(plain, proxy_name)


@pytest.mark.parametrize("case", sorted(PROXY_CASES))
def test_proxy_cases_build_the_same_desired_state_trimmed(case: str) -> None:
    plain = PROXY_CASES[case][0]
    assert built(trimmed(heavy(o) for o in plain)) == built(plain)


def test_the_heavy_parts_are_gone_and_equal_conditions_are_shared() -> None:
    objects = [heavy(o) for path in GOLDEN_INPUTS for o in yaml.safe_load_all(path.read_text(encoding="utf-8")) if o]
    kinds = {o["kind"] for o in objects}
    assert {"Pod", "EndpointSlice", "Service"} <= kinds
    slim = trimmed(objects)
    text = json.dumps(slim)
    for gone in ("managedFields", LAST_APPLIED, "targetRef", "deprecatedTopology", "containerStatuses",
                 "initContainers", "volumes", "readinessProbe", "registry/app:1"):
        assert gone not in text, gone
    conditions = [e["conditions"] for o in slim if o["kind"] == "EndpointSlice" for e in o.get("endpoints") or []
                  if "conditions" in e]
    distinct = {json.dumps(c, sort_keys=True) for c in conditions}
    assert len(conditions) > len(distinct)  # the fixtures repeat conditions: they must be shared
    assert len({id(c) for c in conditions}) == len(distinct)


def test_malformed_parts_are_left_for_the_parser_to_report() -> None:
    odd = {"kind": "EndpointSlice", "metadata": {"name": "x", "namespace": "d", "managedFields": []},
           "endpoints": ["not-an-object", {"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]}
    out = trim("endpointslices", copy.deepcopy(odd))
    assert out["endpoints"][0] == "not-an-object"
    assert out["endpoints"][1]["conditions"] == {"ready": "yes"}  # not a plain conditions object: not shared
    assert "managedFields" not in out["metadata"]
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": ["odd", {"name": "a", "env": []}]}}
    assert trim("pods", pod)["spec"]["containers"] == ["odd", {"name": "a"}]
