"""BGP routers outside the cluster, as kube-router configures them: global flags and per-node annotations.

Every node peers with the routers of ``--peer-router-ips/asns/ports/passwords`` (``flag_peers``), and
with its own routers from its Node's annotations (``node_peers``): ``kube-router.io/peers`` (a YAML list
of ``remoteip``, ``remoteasn`` and optional ``port``, ``password``, ``localip``) or, when that is absent,
the older positional ``kube-router.io/peer.ips``, ``peer.asns``, ``peer.ports``, ``peer.passwords`` and
``peer.localips`` (comma-separated, position by position). Passwords are base64-encoded in both (as in
kube-router), so a password never appears in plain text in a flag or an annotation.

Invariants: pure; a malformed flag raises ``ConfigError`` naming the peer (kr refuses to start); a
malformed annotation is returned as a note and none of that node's annotated peers are used (a
half-read list could pair an address with another peer's AS); IPv4 only.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kr_core.errors import ConfigError
from kr_core.model import Node

MAX_ASN = 4294967295
PEERS_ANNOTATION = "kube-router.io/peers"
PEER_IPS_ANNOTATION = "kube-router.io/peer.ips"
PEER_ASNS_ANNOTATION = "kube-router.io/peer.asns"
PEER_PORTS_ANNOTATION = "kube-router.io/peer.ports"
PEER_PASSWORDS_ANNOTATION = "kube-router.io/peer.passwords"
PEER_LOCAL_IPS_ANNOTATION = "kube-router.io/peer.localips"


@dataclass(frozen=True, slots=True, order=True)
class ExternalPeer:
    """A BGP router outside the cluster."""

    address: str
    asn: int
    port: int = 179
    password: str | None = None  # plain text, decoded from the flag's or annotation's base64
    local_address: str | None = None  # the address kr's side uses (None: the node's, or any with --override-nexthop)


#: TCP MD5 keys are at most 80 bytes (TCP_MD5SIG_MAXKEYLEN).
MAX_PASSWORD_BYTES = 80


def _text(value: object, what: str) -> str | None:
    """``value`` as text: a string or an integer (YAML reads ``port: 179`` as one); anything else (a
    boolean, a fraction, a list) is refused, never coerced."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{what} {value!r} is neither text nor a whole number")


def external_peer(ip: object, asn: object, port: object = None, password: object = None,
                  local_address: object = None) -> ExternalPeer:
    """One peer from its raw values (``password`` base64-encoded, empty meaning none); ``ValueError``
    says what is wrong."""
    ip, asn, port = _text(ip, "address") or "", _text(asn, "AS") or "", _text(port, "port")
    password, local_address = _text(password, "password"), _text(local_address, "local address")
    try:
        address = str(ipaddress.IPv4Address(str(ip).strip()))
        local = str(ipaddress.IPv4Address(local_address.strip())) if local_address and local_address.strip() else None
    except ValueError:
        raise ValueError(f"{ip!r} or local address {local_address!r} is not an IPv4 address") from None
    try:
        number = int(asn)
        number_port = int(port) if port else 179
    except (TypeError, ValueError):
        raise ValueError(f"AS {asn!r} or port {port!r} is not a number") from None
    if not 1 <= number <= MAX_ASN or not 1 <= number_port <= 65535:
        raise ValueError(f"AS {number} or port {number_port} is out of range")
    secret = None
    if password and password.strip():
        try:
            secret = base64.b64decode(password.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("the password is not base64-encoded text") from None
        if any(c in secret for c in '"\\') or not secret.isprintable():
            raise ValueError("the password holds a quote, backslash or control character")
        if len(secret.encode()) > MAX_PASSWORD_BYTES:
            raise ValueError(f"the password is longer than the {MAX_PASSWORD_BYTES} bytes TCP MD5 takes")
    return ExternalPeer(address, number, number_port, secret or None, local)


def _split(raw: str | None) -> list[str]:
    return [item.strip() for item in raw.split(",")] if raw else []


def positional_peers(ips: str | None, asns: str | None, ports: str | None = None, passwords: str | None = None,
                     local_ips: str | None = None, what: str = "peer routers") -> tuple[ExternalPeer, ...]:
    """Peers from kube-router's comma-separated, position-by-position lists; ``ValueError`` on a mismatch."""
    addresses, numbers = _split(ips), _split(asns)
    if len(addresses) != len(numbers):
        raise ValueError(f"{len(addresses)} address(es) but {len(numbers)} AS number(s)")
    optional = {"ports": _split(ports), "passwords": _split(passwords), "local addresses": _split(local_ips)}
    for name, values in optional.items():
        if values and len(values) != len(addresses):
            raise ValueError(f"{len(values)} {name} for {len(addresses)} {what}")
    peers = []
    for index, (ip, asn) in enumerate(zip(addresses, numbers)):
        def at(name: str) -> str | None:
            return optional[name][index] if optional[name] else None
        try:
            peers.append(external_peer(ip, asn, at("ports"), at("passwords"), at("local addresses")))
        except ValueError as exc:
            raise ValueError(f"peer {index + 1} ({ip}): {exc}") from None
    return tuple(peers)


def flag_peers(options: Mapping[str, Any], passwords_file: str | None = None) -> tuple[ExternalPeer, ...]:
    """The routers of ``--peer-router-ips/asns/ports/passwords``, the passwords possibly from the text of
    ``--peer-router-passwords-file`` (``passwords_file``, the same comma-separated base64 list, kept out of
    the process list); ``ConfigError`` names a bad one."""
    passwords = options.get("peer_router_passwords")
    if passwords_file is not None:
        if passwords:
            raise ConfigError("--peer-router-passwords and --peer-router-passwords-file: give one of them")
        passwords = passwords_file.strip()
    try:
        return positional_peers(options.get("peer_router_ips"), options.get("peer_router_asns"),
                                options.get("peer_router_ports"), passwords)
    except ValueError as exc:
        raise ConfigError(f"--peer-router-*: {exc}") from None


def _yaml_peers(raw: str) -> tuple[ExternalPeer, ...]:
    try:
        entries = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("not a list of peers (remoteip, remoteasn, port, password, localip)")
    peers = []
    for index, entry in enumerate(entries):
        if "remoteip" not in entry or "remoteasn" not in entry:
            raise ValueError(f"peer {index + 1} lacks remoteip or remoteasn")
        try:
            peers.append(external_peer(entry["remoteip"], entry["remoteasn"], entry.get("port"),
                                       entry.get("password"), entry.get("localip")))
        except ValueError as exc:
            raise ValueError(f"peer {index + 1} ({entry['remoteip']}): {exc}") from None
    return tuple(peers)


def node_peers(node: Node, notes: list[str]) -> tuple[ExternalPeer, ...]:
    """``node``'s own external routers from its annotations (none, with a note, when they are malformed)."""
    annotations = node.annotations
    try:
        if PEERS_ANNOTATION in annotations:
            return _yaml_peers(annotations[PEERS_ANNOTATION])
        return positional_peers(annotations.get(PEER_IPS_ANNOTATION), annotations.get(PEER_ASNS_ANNOTATION),
                                annotations.get(PEER_PORTS_ANNOTATION), annotations.get(PEER_PASSWORDS_ANNOTATION),
                                annotations.get(PEER_LOCAL_IPS_ANNOTATION), what="peers")
    except ValueError as exc:
        source = PEERS_ANNOTATION if PEERS_ANNOTATION in annotations else "kube-router.io/peer.*"
        notes.append(f"node {node.name}: {source}: {exc}; its own external peers are not used")
        return ()
