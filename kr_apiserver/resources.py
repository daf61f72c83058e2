"""The resource kinds the stand-in API server serves, and how each one behaves.

A ``Resource`` is the static description of one kind: where it lives on the wire (group, version,
plural), whether it is namespaced, which subresources and field selectors it has, and which fields
bump ``metadata.generation``. Everything else in the package looks kinds up here rather than
hard-coding paths or kind names.

Invariants:
- plurals are unique across groups (true of the six kinds served), so a plural alone names a kind;
- the table is immutable; there is no way to register a kind at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """One served kind, as kube-apiserver's discovery describes it."""

    plural: str
    singular: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    #: has a ``/status`` subresource; the main resource then ignores changes to ``.status``
    status_subresource: bool = False
    #: top-level fields whose change increments ``metadata.generation`` (empty: no generation)
    generation_fields: tuple[str, ...] = ()
    #: DELETE answers with the deleted object rather than a Success Status (as the real registry does)
    returns_deleted_object: bool = False
    #: DELETE on the collection path is served
    delete_collection: bool = True
    #: field selector labels beyond ``metadata.name`` and ``metadata.namespace``
    field_labels: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``pods`` or ``endpointslices.discovery.k8s.io``: the name used in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        """The URL prefix of the resource's group version: ``/api/v1`` or ``/apis/{group}/{version}``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


RESOURCES: tuple[Resource, ...] = (
    Resource(
        "namespaces", "namespace", "Namespace", "", "v1", namespaced=False, short_names=("ns",),
        status_subresource=True, delete_collection=False, field_labels=("status.phase",),
    ),
    Resource(
        "nodes", "node", "Node", "", "v1", namespaced=False, short_names=("no",),
        status_subresource=True, field_labels=("spec.unschedulable",),
    ),
    Resource(
        "pods", "pod", "Pod", "", "v1", namespaced=True, short_names=("po",),
        status_subresource=True, generation_fields=("spec",), returns_deleted_object=True,
        field_labels=(
            "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
            "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
        ),
    ),
    Resource(
        "services", "service", "Service", "", "v1", namespaced=True, short_names=("svc",),
        status_subresource=True, generation_fields=("spec",), returns_deleted_object=True,
        field_labels=("spec.clusterIP", "spec.type"),
    ),
    Resource(
        "endpointslices", "endpointslice", "EndpointSlice", "discovery.k8s.io", "v1", namespaced=True,
        generation_fields=("addressType", "endpoints", "ports"),
    ),
    Resource(
        "networkpolicies", "networkpolicy", "NetworkPolicy", "networking.k8s.io", "v1", namespaced=True,
        short_names=("netpol",), generation_fields=("spec",),
    ),
)

BY_PLURAL: Mapping[str, Resource] = {resource.plural: resource for resource in RESOURCES}
BY_KIND: Mapping[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}

#: group versions in discovery order: core first, then the named groups
GROUP_VERSIONS: tuple[tuple[str, str], ...] = tuple(dict.fromkeys((r.group, r.version) for r in RESOURCES))


def in_group_version(group: str, version: str) -> tuple[Resource, ...]:
    return tuple(r for r in RESOURCES if r.group == group and r.version == version)
