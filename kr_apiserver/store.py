"""The object store: objects per kind, one global resourceVersion, a bounded change history, watches.

This plays etcd plus the generic registry of kube-apiserver: it assigns uids, timestamps, generations
and resource versions, enforces optimistic concurrency, keeps the last ``history`` changes so watches
can resume from a resourceVersion, and fans committed changes out to open watches.

Invariants:
- one lock guards objects, the revision counter, the history and the set of watches, so a list's
  resourceVersion and a watch's starting point are always consistent with the objects it saw;
- the revision is global across kinds and strictly increasing; every committed write (including a
  DELETE) gets the next one, and a write that changes nothing commits nothing (no new revision, no
  event), as an etcd-backed registry behaves;
- stored objects are never mutated after commit: callers may hold and serialize them without copying;
- a watch may start from any revision >= ``oldest`` (``compacted`` revision); older ones are 410 Expired;
  a paginated list (``pages``) is read at its first page's revision, until a compaction;
- deleting a namespace first deletes every namespaced object in it (no finalizers, no grace period);
  creating a namespaced object in a namespace that does not exist is allowed.
"""

from __future__ import annotations

import collections
import copy
import datetime
import secrets
import string
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kr_apiserver import status
from kr_apiserver.pages import ListPages
from kr_apiserver.resources import BY_KIND, BY_PLURAL, RESOURCES, Resource
from kr_apiserver.selectors import ObjectFilter
from kr_apiserver.status import APIError, bad_request
from kr_apiserver.watch import Change, Object, Watch, translate

Key = tuple[str, str]  # (namespace or "", name)
#: An admission plugin: (resource plural, stored object or None on create, the new object, the stored
#: objects of that resource) -> None. Called under the store lock before a create or an update of the
#: main resource is committed; it may fill fields of ``new`` in place (allocate a ClusterIP) or raise
#: ``APIError`` to refuse the write, as kube-apiserver's admission chain does.
Admission = Callable[[str, "Object | None", dict[str, Any], Mapping[Key, "Object"]], None]

_NAME_SUFFIX = string.ascii_lowercase + string.digits


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in _meta(obj).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


class Store:
    """All objects of all served kinds, with list, watch and the write verbs."""

    def __init__(self, history: int = 1000, watch_queue_size: int = 1000):
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, Object]] = {r.plural: {} for r in RESOURCES}
        self._revision = 1
        self._history: collections.deque[Change] = collections.deque()
        self._history_limit = history
        self._oldest = self._revision  # the oldest revision a watch may start from
        self._watches: dict[str, set[Watch]] = {r.plural: set() for r in RESOURCES}
        self._watch_queue_size = watch_queue_size
        self._latest: dict[str, int] = {}  # resource -> revision of its last committed change
        self.admission: list[Admission] = []
        self.pages = ListPages()  # paginated lists in progress; a compaction forgets them

    # --- reads

    @property
    def revision(self) -> int:
        with self._lock:
            return self._revision

    @property
    def oldest(self) -> int:
        with self._lock:
            return self._oldest

    def latest_revisions(self) -> dict[str, int]:
        """Resource -> the revision of its last committed change (resources never written are absent)."""
        with self._lock:
            return dict(self._latest)

    def get(self, resource: str, namespace: str | None, name: str) -> Object:
        r = _resource(resource)
        with self._lock:
            obj = self._objects[r.plural].get(_key(r, namespace, name))
        if obj is None:
            raise status.not_found(r, name)
        return obj

    def list(self, resource: str, object_filter: ObjectFilter = ObjectFilter()) -> tuple[list[Object], int]:
        """Matching objects in key order (as etcd returns them) and the revision they were read at."""
        r = _resource(resource)
        with self._lock:
            items = [obj for _, obj in sorted(self._objects[r.plural].items()) if object_filter.matches(obj)]
            return items, self._revision

    # --- writes

    def create(self, resource: str, obj: Mapping[str, Any], namespace: str | None = None) -> Object:
        r = _resource(resource)
        new = _prepare(r, obj, namespace)
        meta = new["metadata"]
        if meta.get("resourceVersion"):  # the message and code etcd3's storage gives upstream
            raise APIError(500, "resourceVersion should not be set on objects to be created")
        with self._lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(r, meta)
            if not meta.get("name"):
                raise status.invalid(r, "", "metadata.name", "Required value: name or generateName is required")
            key = _key(r, meta.get("namespace"), meta["name"])
            if key in self._objects[r.plural]:
                raise status.already_exists(r, meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            if r.generation_fields:
                meta["generation"] = 1
            self._admit(r, None, new)
            self._commit(r, key, "ADDED", new)
            return new

    def replace(
        self, resource: str, namespace: str | None, name: str, obj: Mapping[str, Any], subresource: str | None = None
    ) -> Object:
        """PUT: unconditional unless the body carries a resourceVersion, which must be the stored one."""
        r = _resource(resource)
        with self._lock:
            stored = self._stored(r, namespace, name)
            return self._update_locked(r, stored, _prepare(r, obj, namespace, name), subresource)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        mutate: Callable[[Object], Mapping[str, Any]],
        subresource: str | None = None,
    ) -> Object:
        """Apply ``mutate`` to the stored object and store the result, atomically (no lost updates)."""
        r = _resource(resource)
        with self._lock:
            stored = self._stored(r, namespace, name)
            return self._update_locked(r, stored, _prepare(r, mutate(stored), namespace, name), subresource)

    def delete(
        self, resource: str, namespace: str | None, name: str, preconditions: Mapping[str, Any] | None = None
    ) -> Object:
        """Remove the object now; returns it as the DELETED event carries it (with a new resourceVersion)."""
        r = _resource(resource)
        with self._lock:
            stored = self._stored(r, namespace, name)
            for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                wanted = (preconditions or {}).get(field)
                if wanted and wanted != _meta(stored).get(field):
                    raise status.conflict(
                        r, name, f"Precondition failed: {label} in precondition: {wanted}, "
                        f"{label} in object meta: {_meta(stored).get(field)}",
                    )
            return self._delete_locked(r, stored)

    def delete_collection(self, resource: str, object_filter: ObjectFilter = ObjectFilter()) -> list[Object]:
        r = _resource(resource)
        with self._lock:
            matching = [obj for _, obj in sorted(self._objects[r.plural].items()) if object_filter.matches(obj)]
            return [self._delete_locked(r, obj) for obj in matching]

    def apply(self, obj: Mapping[str, Any]) -> Object:
        """Create or unconditionally replace an object found by its apiVersion and kind (for seeding).

        Server-owned fields a dump carries (resourceVersion, uid, creationTimestamp) are dropped;
        a namespaced object without a namespace goes to ``default``, as kubectl would put it.
        """
        r = BY_KIND.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
        if r is None:
            raise ValueError(f"kind {obj.get('kind')!r} in {obj.get('apiVersion')!r} is not served")
        meta = {k: v for k, v in _meta(obj).items() if k not in ("resourceVersion", "uid", "creationTimestamp")}
        namespace = (meta.get("namespace") or "default") if r.namespaced else None
        body = {**obj, "metadata": meta}
        with self._lock:
            exists = meta.get("name") and _key(r, namespace, meta["name"]) in self._objects[r.plural]
        if exists:
            return self.replace(r.plural, namespace, meta["name"], body)
        return self.create(r.plural, body, namespace)

    # --- watches

    def watch(self, resource: str, object_filter: ObjectFilter, since: int | None) -> Watch:
        """Open a watch from revision ``since`` (replayed from history) or, if None, from now with
        synthetic ADDED events for every matching object."""
        r = _resource(resource)
        with self._lock:
            if since is None:
                initial = [("ADDED", obj) for _, obj in sorted(self._objects[r.plural].items())
                           if object_filter.matches(obj)]
            elif since < self._oldest:
                raise status.expired(since, self._oldest)
            elif since > self._revision:
                raise status.too_large(since, self._revision)
            else:
                replay = []
                for change in reversed(self._history):
                    if change.revision <= since:
                        break
                    if change.resource == r.plural and (event := translate(change, object_filter)):
                        replay.append(event)
                initial = replay[::-1]
            watch = Watch(r.plural, object_filter, self._watch_queue_size, initial)
            self._watches[r.plural].add(watch)
            return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            self._watches[watch.resource].discard(watch)

    def bookmark_revision(self, watch: Watch) -> int | None:
        """The revision a BOOKMARK may claim for ``watch``: the current one, if the watch has been sent
        everything up to it; None while events are still queued."""
        with self._lock:
            return self._revision if watch.idle() else None

    def close_watches(self, reason: str, resource: str | None = None) -> int:
        with self._lock:
            watches = [w for plural, ws in self._watches.items() if resource in (None, plural) for w in ws]
        for watch in watches:
            watch.close(reason)
        return len(watches)

    def compact(self) -> int:
        """Discard the whole history: watches from any revision older than the current one get 410, and
        so do the continue tokens of paginated lists in progress."""
        with self._lock:
            self._history.clear()
            self._oldest = self._revision
        self.pages.forget()
        return self._oldest

    # --- internals (called with the lock held)

    def _stored(self, r: Resource, namespace: str | None, name: str) -> Object:
        stored = self._objects[r.plural].get(_key(r, namespace, name))
        if stored is None:
            raise status.not_found(r, name)
        return stored

    def _generate_name(self, r: Resource, meta: Mapping[str, Any]) -> str:
        while True:
            name = meta["generateName"] + "".join(secrets.choice(_NAME_SUFFIX) for _ in range(5))
            if _key(r, meta.get("namespace"), name) not in self._objects[r.plural]:
                return name

    def _update_locked(self, r: Resource, stored: Object, new: Object, subresource: str | None) -> Object:
        meta, old_meta = new["metadata"], _meta(stored)
        name = old_meta["name"]
        if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
            raise status.modified_conflict(r, name)
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise status.conflict(
                r, name,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
            )
        if subresource == "status":
            # the status subresource changes .status and nothing else
            merged = {k: v for k, v in stored.items() if k != "status"}
            merged["metadata"] = dict(old_meta)  # private: the commit sets its resourceVersion
            if "status" in new:
                merged["status"] = new["status"]
            new = merged
        else:
            if r.status_subresource:  # the main resource ignores .status changes
                new.pop("status", None)
                if "status" in stored:
                    new["status"] = stored["status"]
            for field in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if field in old_meta:
                    new["metadata"][field] = old_meta[field]
                else:
                    new["metadata"].pop(field, None)
            if any(new.get(field) != stored.get(field) for field in r.generation_fields):
                new["metadata"]["generation"] = old_meta.get("generation", 0) + 1
            self._admit(r, stored, new)
        if _without_version(new) == _without_version(stored):
            return stored
        self._commit(r, _key(r, old_meta.get("namespace"), name), "MODIFIED", new, stored)
        return new

    def _delete_locked(self, r: Resource, stored: Object) -> Object:
        meta = _meta(stored)
        if r.plural == "namespaces":
            for inner in RESOURCES:
                if inner.namespaced:
                    for key, obj in sorted(self._objects[inner.plural].items()):
                        if key[0] == meta["name"]:
                            self._delete_locked(inner, obj)
        final = {**stored, "metadata": dict(meta)}
        self._commit(r, _key(r, meta.get("namespace"), meta["name"]), "DELETED", final)
        return final

    def _admit(self, r: Resource, stored: Object | None, new: dict[str, Any]) -> None:
        for admit in self.admission:
            admit(r.plural, stored, new, self._objects[r.plural])

    def _commit(self, r: Resource, key: Key, kind_of_change: str, obj: Object, previous: Object | None = None) -> None:
        """Give ``obj`` the next revision, store (or remove) it, record the change and fan it out."""
        self._revision += 1
        self._latest[r.plural] = self._revision
        obj["metadata"]["resourceVersion"] = str(self._revision)
        if kind_of_change == "DELETED":
            del self._objects[r.plural][key]
        else:
            self._objects[r.plural][key] = obj
        change = Change(self._revision, r.plural, kind_of_change, obj, previous)
        self._history.append(change)
        while len(self._history) > self._history_limit:
            self._oldest = self._history.popleft().revision
        for watch in self._watches[r.plural]:
            watch.offer(change)


def _resource(plural: str) -> Resource:
    try:
        return BY_PLURAL[plural]
    except KeyError:
        raise ValueError(f"resource {plural!r} is not served") from None


def _key(r: Resource, namespace: str | None, name: str) -> Key:
    return ((namespace or "") if r.namespaced else "", name)


def _prepare(r: Resource, obj: Any, namespace: str | None, name: str | None = None) -> Object:
    """A private deep copy of a request body with apiVersion, kind and namespace checked and filled."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata", {}), Mapping):
        raise bad_request(f"the body of the request was not a valid {r.kind} object")
    if obj.get("kind", r.kind) != r.kind or obj.get("apiVersion", r.api_version) != r.api_version:
        raise bad_request(f"{obj.get('kind')} in version {obj.get('apiVersion')!r} cannot be handled as a {r.kind}")
    body = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("kind", "apiVersion")}
    new: Object = {"kind": r.kind, "apiVersion": r.api_version, **body}
    meta = new.setdefault("metadata", {})
    if r.namespaced:
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        meta["namespace"] = namespace or meta.get("namespace") or "default"
    else:
        meta.pop("namespace", None)
    if name is not None:
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
    return new
