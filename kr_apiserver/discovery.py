"""Discovery documents: ``/version``, ``/api``, ``/apis``, ``/apis/{group}`` and each group version.

They are built from the resource table, so discovery lists exactly what the server serves. Only the
legacy (unaggregated) JSON form is produced; clients asking for aggregated discovery fall back to it.
"""

from __future__ import annotations

from typing import Any

from kr_apiserver.resources import GROUP_VERSIONS, Resource, in_group_version

VERSION_INFO: dict[str, str] = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-kr",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


def core_versions(server_address: str) -> dict[str, Any]:
    """``/api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{g}/{v}", "version": v} for g, v in GROUP_VERSIONS if g == group]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def group_list() -> dict[str, Any]:
    """``/apis``: the named groups (the core group is served under ``/api``)."""
    groups = list(dict.fromkeys(g for g, _ in GROUP_VERSIONS if g))
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g) for g in groups]}


def group(name: str) -> dict[str, Any] | None:
    """``/apis/{group}``, or None if the group is not served."""
    if not any(g == name for g, _ in GROUP_VERSIONS if g):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def _entries(resource: Resource) -> list[dict[str, Any]]:
    verbs = sorted({*_VERBS, "deletecollection"} if resource.delete_collection else _VERBS)
    entry: dict[str, Any] = {
        "name": resource.plural,
        "singularName": resource.singular,
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": verbs,
    }
    if resource.short_names:
        entry["shortNames"] = list(resource.short_names)
    entries = [entry]
    if resource.status_subresource:
        entries.append({
            "name": f"{resource.plural}/status",
            "singularName": "",
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": ["get", "patch", "update"],
        })
    return entries


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/{group}/{version}``, or None if that group version is not served."""
    resources = in_group_version(group, version)
    if not resources:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [entry for r in resources for entry in _entries(r)],
    }
