"""URL paths of resource requests, parsed into a ``Route``.

Shapes served, under ``/api/v1`` or ``/apis/{group}/{version}``::

    {plural}                                  cluster-scoped collection, or all namespaces
    {plural}/{name}[/status]                  cluster-scoped object (namespaces, nodes)
    namespaces/{ns}/{plural}                  namespaced collection
    namespaces/{ns}/{plural}/{name}[/status]  namespaced object

Invariant: a path that does not name a served resource, namespace scope and subresource parses to
None (the API layer answers 404), so verbs never see an impossible combination.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote

from kr_apiserver.resources import Resource, in_group_version


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    resource: Resource
    namespace: str | None  # the namespace in the path; None for cluster scope or all namespaces
    name: str | None  # None for the collection
    subresource: str | None = None


def parse(path: str) -> Route | None:
    segments = [unquote(s) for s in path.strip("/").split("/")]
    if len(segments) >= 2 and segments[0] == "api":
        group, version, rest = "", segments[1], segments[2:]
    elif len(segments) >= 3 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    served = {r.plural: r for r in in_group_version(group, version)}
    if len(rest) >= 3 and rest[0] == "namespaces" and (r := served.get(rest[2])) and r.namespaced:
        namespace, rest = rest[1], rest[2:]
    else:
        r, namespace = served.get(rest[0]) if rest else None, None
    if r is None or len(rest) > 3 or (namespace is None and len(rest) > 1 and r.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and not (subresource == "status" and r.status_subresource):
        return None
    if name == "" or namespace == "":
        return None
    return Route(r, namespace, name, subresource)
