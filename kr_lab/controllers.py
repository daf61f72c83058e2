"""What kube-apiserver's allocators and kube-controller-manager do for the lab, inside the API stand-in.

- ``ServiceAllocator`` is an admission plugin: it gives a Service without one a ClusterIP from the
  service CIDR, NodePorts (30000-32767) to NodePort and LoadBalancer ports, and a healthCheckNodePort to
  LoadBalancers with ``externalTrafficPolicy: Local``, and refuses taken or out-of-range values, as the
  real allocators do. It runs under the store lock, so two creates never get one address.
- ``EndpointSliceController`` keeps each selector-bearing Service's EndpointSlices in step with the
  pods it selects (ready pods with an IP; target ports resolved by name per pod), level-triggered.

Invariant: ``done_through`` is a revision R such that every Service and Pod change up to R is reflected
in the EndpointSlices; the lab's apply barrier waits on it before waiting on the agents.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import threading
from collections.abc import Mapping
from typing import Any

from kr_apiserver import APIError, Store
from kr_apiserver.selectors import ObjectFilter
from kr_lab.cluster import MANAGED_BY, endpoint_slices

log = logging.getLogger(__name__)

NODE_PORT_RANGE = range(30000, 32768)
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


def _invalid(message: str) -> APIError:
    return APIError(422, message, "Invalid")


class ServiceAllocator:
    """Admission: ClusterIP, NodePort and healthCheckNodePort allocation for Services."""

    def __init__(self, service_cidr: str) -> None:
        self.network = ipaddress.IPv4Network(service_cidr)

    def __call__(self, resource: str, stored: Mapping[str, Any] | None, new: dict[str, Any],
                 existing: Mapping[Any, Mapping[str, Any]]) -> None:
        if resource != "services":
            return
        spec = new.setdefault("spec", {})
        kind = spec.get("type", "ClusterIP")
        if kind == "ExternalName":
            return
        others = [obj for obj in existing.values() if stored is None or obj["metadata"]["uid"] != stored["metadata"]["uid"]]
        old_spec = (stored or {}).get("spec", {})
        self._cluster_ip(spec, old_spec, others)
        if kind in ("NodePort", "LoadBalancer"):
            self._node_ports(spec, old_spec, others)
        if kind == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local" and not spec.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = self._free_port(others, spec)

    def _cluster_ip(self, spec: dict[str, Any], old_spec: Mapping[str, Any], others: list[Mapping[str, Any]]) -> None:
        wanted = spec.get("clusterIP") or old_spec.get("clusterIP")
        if wanted == "None":
            spec["clusterIPs"] = ["None"]
            return
        used = {o.get("spec", {}).get("clusterIP") for o in others}
        if wanted:
            try:
                address = ipaddress.IPv4Address(wanted)
            except ValueError:
                raise _invalid(f"spec.clusterIP: Invalid value: {wanted!r}: must be a valid IP address") from None
            if address not in self.network:
                raise _invalid(f"spec.clusterIP: Invalid value: {wanted!r}: provided IP is not in the valid range {self.network}")
            if wanted in used:
                raise _invalid(f"spec.clusterIP: Invalid value: {wanted!r}: provided IP is already allocated")
        else:
            # .0 and .1 stay free: the network address, and the address kube-apiserver gives "kubernetes"
            candidates = (str(ip) for ip in self.network.hosts() if ip != self.network.network_address + 1)
            wanted = next((ip for ip in candidates if ip not in used), None)
            if wanted is None:
                raise APIError(500, f"failed to allocate a serviceIP: range {self.network} is full", "InternalError")
        spec["clusterIP"] = wanted
        spec["clusterIPs"] = [wanted]

    def _node_ports(self, spec: dict[str, Any], old_spec: Mapping[str, Any], others: list[Mapping[str, Any]]) -> None:
        old = {(p.get("name"), p.get("protocol", "TCP")): p.get("nodePort") for p in old_spec.get("ports", [])}
        for index, port in enumerate(spec.get("ports", [])):
            number = port.get("nodePort") or old.get((port.get("name"), port.get("protocol", "TCP")))
            if number:
                if number not in NODE_PORT_RANGE:
                    raise _invalid(f"spec.ports[{index}].nodePort: Invalid value: {number}: provided port is not in the valid range 30000-32767")
                if number in _node_ports_in_use(others):
                    raise _invalid(f"spec.ports[{index}].nodePort: Invalid value: {number}: provided port is already allocated")
                port["nodePort"] = number
            else:
                port["nodePort"] = self._free_port(others, spec)

    @staticmethod
    def _free_port(others: list[Mapping[str, Any]], spec: Mapping[str, Any]) -> int:
        used = _node_ports_in_use(others) | _node_ports_in_use([{"spec": spec}])
        for number in NODE_PORT_RANGE:
            if number not in used:
                return number
        raise APIError(500, "failed to allocate a nodePort: range 30000-32767 is full", "InternalError")


def _node_ports_in_use(services: list[Mapping[str, Any]]) -> set[int]:
    used = set()
    for svc in services:
        spec = svc.get("spec", {})
        used.update(p["nodePort"] for p in spec.get("ports", []) if p.get("nodePort"))
        if spec.get("healthCheckNodePort"):
            used.add(spec["healthCheckNodePort"])
    return used


class EndpointSliceController:
    """Reconciles every managed EndpointSlice whenever a Service or Pod changes."""

    WATCHED = ("services", "pods")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.done_through = 0
        self._stop = threading.Event()
        self._watches = [store.watch(resource, ObjectFilter(), None) for resource in self.WATCHED]
        self._thread = threading.Thread(target=self._run, name="endpointslice-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for watch in self._watches:
            self.store.unwatch(watch)
        self._thread.join(timeout=2)

    def status(self) -> dict[str, str]:
        return {"doneThrough": str(self.done_through)}

    def _run(self) -> None:
        pending = True  # reconcile once at start
        while not self._stop.is_set():
            revision = self.store.revision  # read first: every change up to it is queued by now
            for index, watch in enumerate(self._watches):
                if watch.closed:  # it fell too far behind: a new watch, and reconcile everything
                    self._watches[index] = self.store.watch(self.WATCHED[index], ObjectFilter(), None)
                    pending = True
                while self._watches[index].next(0) is not None:
                    pending = True
            if pending:
                try:
                    self.reconcile()
                except Exception:  # keep serving; retry the whole reconcile shortly
                    log.exception("endpointslice reconcile failed")
                    self._stop.wait(0.2)
                    continue
                pending = False
            self.done_through = revision
            if any(watch.next(0.05) is not None for watch in self._watches):
                pending = True

    def reconcile(self) -> None:
        """Make the managed EndpointSlices match the current Services and Pods."""
        services, _ = self.store.list("services")
        pods, _ = self.store.list("pods")
        slices, _ = self.store.list("endpointslices")
        live_pods = [p for p in pods if _serving(p)]
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for svc in services:
            if svc.get("spec", {}).get("selector") and svc.get("spec", {}).get("type") != "ExternalName":
                for slice_ in endpoint_slices(svc, live_pods):
                    wanted[(slice_["metadata"]["namespace"], slice_["metadata"]["name"])] = slice_
        current = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in slices
                   if s["metadata"].get("labels", {}).get("endpointslice.kubernetes.io/managed-by") == MANAGED_BY}
        for key, slice_ in wanted.items():
            old = current.get(key)
            if old is not None and _content(old) == _content(slice_):
                continue
            slice_["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = _now()
            self.store.apply(slice_)
        for key in current.keys() - wanted.keys():
            self.store.delete("endpointslices", key[0], key[1])


def _serving(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    return bool(status.get("podIP")) and status.get("phase") == "Running" and ready and not pod["metadata"].get("deletionTimestamp")


def _content(slice_: Mapping[str, Any]) -> tuple[Any, ...]:
    return (slice_.get("ports"), slice_.get("endpoints"), slice_.get("addressType"),
            slice_.get("metadata", {}).get("labels"))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
