"""A lab's network from its spec: namespaces, bridges, veths, addresses, and the pods' echo servers.

Names (the rest of the lab finds everything by them, so they are the contract):
- ``kr<id>-`` prefixes every namespace of lab ``<id>`` (4 lowercase hex chars); nothing else is named so;
- ``kr<id>-sw`` is the switch: one bridge ``br<i>`` per LAN (``i`` = the LAN's index in the spec, alias =
  the LAN's name), a port ``h<8 hex of sha256(host name)>`` per host (named after the host, not its place
  in the spec, so hosts can join and leave a running lab) and ``r<i>`` per router leg;
- ``kr<id>-rt`` is the router, only when there are 2+ LANs: ``eth<i>`` on LAN ``i`` with the LAN's first
  host address, forwarding on;
- ``kr<id>-h-<host>`` is the master, a node or an external host: ``eth0`` on its LAN, a default route via
  the router when there is one. A node also has ``kube-bridge`` (a fixed MAC) holding its pod CIDR's first host address
  (the pods' gateway), a route for the service CIDR on ``eth0`` (standing in for a real node's default
  route), ``ip_forward=1`` and ``bridge-nf-call-iptables=1``;
- ``kr<id>-p-<k8s namespace>-<pod>`` is a pod: ``eth0`` (MTU 1450) with its IP and a default route via the
  gateway; the peer in the node is ``veth<8 hex of sha256("ns/name")>``, a kube-bridge port in hairpin mode;
- a name longer than 60 characters keeps its first 51 and gets ``-<8 hex of sha256(full name)>``.

Invariants:
- nothing is created in the root namespace and no lab address exists outside lab namespaces;
- ``teardown`` needs only the lab id: it finds namespaces (and ``/etc/netns`` leftovers) by prefix, kills
  every process in them and deletes them, so it also cleans a lab whose state or processes are gone;
- ``add_pod`` returns only once the pod's server listens on every port it can serve; ``remove_pod``
  returns once the pod's bridge port is gone, so the pod can be added again at once; ``add_host`` and
  ``remove_host`` do the same for a host joining or leaving a running lab (its switch port).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from pathlib import Path

from kr_lab import echo, netns
from kr_lab.spec import Host, LabSpec, PodSpec
from kr_lab.state import LabError

BRIDGE = "kube-bridge"
POD_MTU = 1450
MAX_NETNS_NAME = 60
_LAB_ID = re.compile(r"^[0-9a-f]{4}$")
_LAB_NS = re.compile(r"^kr([0-9a-f]{4})-")
NODE_SYSCTLS = {"net.ipv4.ip_forward": 1, "net.bridge.bridge-nf-call-iptables": 1}
SWITCH_SYSCTLS = {"net.bridge.bridge-nf-call-iptables": 0, "net.bridge.bridge-nf-call-ip6tables": 0,
                  "net.bridge.bridge-nf-call-arptables": 0}  # a plain L2 switch: bridged frames skip netfilter


class LabExistsError(LabError):
    """Namespaces with the lab's prefix already exist."""


# --- names


def lab_prefix(lab_id: str) -> str:
    if not _LAB_ID.match(lab_id):
        raise ValueError(f"lab id must be 4 lowercase hex characters, got {lab_id!r}")
    return f"kr{lab_id}-"


def switch_ns(lab_id: str) -> str:
    return f"{lab_prefix(lab_id)}sw"


def router_ns(lab_id: str) -> str:
    return f"{lab_prefix(lab_id)}rt"


def host_ns(lab_id: str, host_name: str) -> str:
    return _fit(f"{lab_prefix(lab_id)}h-{host_name}")


def pod_ns(lab_id: str, namespace: str, pod_name: str) -> str:
    return _fit(f"{lab_prefix(lab_id)}p-{namespace}-{pod_name}")


def switch_port(host_name: str) -> str:
    """A host's port on the switch: stable, unique per host name, 9 characters."""
    return "h" + hashlib.sha256(host_name.encode()).hexdigest()[:8]


def pod_veth(namespace: str, pod_name: str) -> str:
    """The pod's veth end in its node namespace: stable, unique per pod key, 12 characters."""
    return "veth" + hashlib.sha256(f"{namespace}/{pod_name}".encode()).hexdigest()[:8]


def gateway(pod_cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The pods' gateway on a node: the pod CIDR's first host address, on ``kube-bridge``."""
    return ipaddress.IPv4Interface(f"{next(pod_cidr.hosts())}/{pod_cidr.prefixlen}")


def list_labs() -> list[str]:
    """Ids of the labs that have namespaces (or ``/etc/netns`` leftovers) on this machine."""
    return sorted({m.group(1) for name in netns.list_namespaces("kr") if (m := _LAB_NS.match(name))})


def _fit(name: str) -> str:
    if len(name) <= MAX_NETNS_NAME:
        return name
    return f"{name[:MAX_NETNS_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# --- building


def build_network(lab_id: str, spec: LabSpec) -> None:
    """Create the switch, the router (2+ LANs) and every host with its links; pods come with ``add_pod``.

    On failure the lab is half built: the caller runs ``teardown(lab_id)``.
    """
    prefix = lab_prefix(lab_id)
    if existing := netns.list_namespaces(prefix):
        raise LabExistsError(f"lab {lab_id} already has namespaces: {', '.join(existing)}")
    sw = switch_ns(lab_id)
    netns.create(sw)
    netns.set_sysctls(sw, SWITCH_SYSCTLS)
    netns.ip_batch((line for i, lan in enumerate(spec.lans)
                    for line in (f"link add br{i} type bridge", f"link set br{i} alias {lan.name}", f"link set br{i} up")),
                   sw)
    switch_ports: list[str] = []
    if len(spec.lans) > 1:
        rt = router_ns(lab_id)
        netns.create(rt)
        for i in range(len(spec.lans)):
            netns.add_veth(rt, f"eth{i}", sw, f"r{i}")
            switch_ports.append(f"link set r{i} master br{i} up")
        netns.ip_batch((line for i, lan in enumerate(spec.lans)
                        for line in (f"addr add {spec.router_ip(lan.name)}/{lan.subnet.prefixlen} dev eth{i}",
                                     f"link set eth{i} up")), rt)
        netns.set_sysctls(rt, {"net.ipv4.ip_forward": 1})
    for host in spec.hosts:
        _make_host(lab_id, spec, host)
        switch_ports.append(_plug_line(spec, host))
    netns.ip_batch(switch_ports, sw)


def add_host(lab_id: str, spec: LabSpec, host: Host) -> None:
    """Create ``host`` (one of ``spec``'s hosts) in the running lab and plug it into its LAN.

    On failure nothing of it is left; a host whose namespace exists already is refused before anything changes.
    """
    if (ns := host_ns(lab_id, host.name)) in netns.list_namespaces(ns):
        raise LabError(f"{host.name} exists already in lab {lab_id} ({ns})")
    try:
        _make_host(lab_id, spec, host)
        netns.ip_batch([_plug_line(spec, host)], switch_ns(lab_id))
    except BaseException:
        remove_host(lab_id, host.name)
        raise


def _plug_line(spec: LabSpec, host: Host) -> str:
    """The switch's ``ip`` line that puts ``host``'s port on its LAN's bridge."""
    index = next(i for i, lan in enumerate(spec.lans) if lan.name == host.lan)
    return f"link set {switch_port(host.name)} master br{index} up"


def _make_host(lab_id: str, spec: LabSpec, host: Host) -> None:
    ns = host_ns(lab_id, host.name)
    netns.create(ns)
    netns.add_veth(ns, "eth0", switch_ns(lab_id), switch_port(host.name))
    lines = [f"addr add {host.ip}/{spec.lan(host.lan).subnet.prefixlen} dev eth0", "link set eth0 up"]
    if (router := spec.router_ip(host.lan)) is not None:
        lines.append(f"route add default via {router}")
    if host.role == "node" and host.pod_cidr is not None:
        # a fixed MAC (as the CNI bridge plugin sets): a bridge without one takes its ports' lowest, which
        # changes as pods come and go and leaves pods sending to a gateway MAC nobody has any more
        lines += [f"link add {BRIDGE} address {bridge_mac(host.name)} type bridge",
                  f"addr add {gateway(host.pod_cidr)} dev {BRIDGE}",
                  f"link set {BRIDGE} up",
                  # what a real node's default route gives it: the node's own stack reaches ClusterIPs
                  # (routing comes before OUTPUT's DNAT), and rejects of service ports are reached
                  f"route add {spec.service_cidr} dev eth0"]
        netns.set_sysctls(ns, NODE_SYSCTLS)
    netns.ip_batch(lines, ns)


def bridge_mac(node: str) -> str:
    """A node's ``kube-bridge`` MAC: locally administered, unicast, derived from the node's name."""
    digest = hashlib.sha256(f"kube-bridge/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def add_pod(lab_id: str, spec: LabSpec, pod: PodSpec, ip: ipaddress.IPv4Address, log_file: str | Path) -> str:
    """Create pod ``pod`` with address ``ip`` on its node and start its echo server; return its namespace.

    The server runs detached (its own session) with stdout/stderr appended to ``log_file``.
    """
    node, ip = spec.host(pod.node), ipaddress.IPv4Address(ip)
    if node.pod_cidr is None:
        raise LabError(f"{node.name} has no pod CIDR")
    gw = gateway(node.pod_cidr)
    if ip not in node.pod_cidr or ip in (gw.ip, node.pod_cidr.network_address, node.pod_cidr.broadcast_address):
        raise LabError(f"{ip} is not a pod address of {node.name} ({node.pod_cidr}, gateway {gw.ip})")
    ns, node_ns, peer = pod_ns(lab_id, pod.namespace, pod.name), host_ns(lab_id, node.name), pod_veth(pod.namespace, pod.name)
    netns.create(ns)
    try:
        netns.add_veth(ns, "eth0", node_ns, peer, mtu=POD_MTU)
        # a pod reusing a deleted pod's address announces its MAC (gratuitous ARP when eth0 comes up),
        # and the node forgets the old one, so nobody keeps sending to the departed pod
        netns.set_sysctls(ns, {"net.ipv4.conf.eth0.arp_notify": 1})
        netns.ip_batch([f"neigh flush to {ip} dev {BRIDGE}"], node_ns)
        netns.ip_batch([f"link set {peer} master {BRIDGE}", f"link set {peer} type bridge_slave hairpin on",
                        f"link set {peer} up"], node_ns)
        netns.ip_batch([f"addr add {ip}/{node.pod_cidr.prefixlen} dev eth0", "link set eth0 up",
                        f"route add default via {gw.ip}"], ns)
        echo.start(ns, pod.key, [(p.port, p.protocol) for p in pod.ports], log_file)
    except echo.EchoStartError as exc:
        remove_pod(lab_id, pod.namespace, pod.name)
        raise LabError(f"pod {pod.key}: {exc}") from exc
    except BaseException:
        remove_pod(lab_id, pod.namespace, pod.name)
        raise
    return ns


def remove_pod(lab_id: str, namespace: str, pod_name: str) -> None:
    """Kill the pod's processes, delete its veth (and so its bridge port) and its namespace."""
    _remove_namespace(pod_ns(lab_id, namespace, pod_name))


def remove_host(lab_id: str, host_name: str) -> None:
    """Kill the host's processes, delete its link to the switch (so its switch port is gone at once) and
    its namespace. Its pods must have been removed first: their node ends of the veths live in it."""
    _remove_namespace(host_ns(lab_id, host_name))


def _remove_namespace(name: str) -> None:
    netns.kill_all([name])
    # The kernel frees a deleted namespace's links lazily; deleting eth0 first frees the other end now,
    # so the same pod or host can be added again at once.
    try:
        netns.ip("link", "del", "eth0", netns=name)
    except netns.IPError:
        pass  # half-made, without eth0, or no namespace at all
    netns.delete([name])


def teardown(lab_id: str) -> list[str]:
    """Kill every process in the lab's namespaces and delete them; return the names removed."""
    names = netns.list_namespaces(lab_prefix(lab_id))
    netns.kill_all(names)
    netns.delete(names)
    return names
