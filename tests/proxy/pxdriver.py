"""Run the proxy.iptables backend (and, for coexistence, firewall.iptables) in the current network
namespace, as ``kr run`` would on a node.

``ip netns exec NS python pxdriver.py ACTIONS.pickle``: the file holds ``(options, actions)``, actions
being a list of ``(action, arg)``:

- ``("sync", (DesiredState, full))``, ``("cleanup", None)``: on the proxy;
- ``("fw-sync", (DesiredState, full))``: on the firewall;
- ``("http", port)``: a GET of ``http://127.0.0.1:PORT/`` from this process (so inside the namespace);
- ``("udp", (ip, port, sport))``: send one datagram from that source port;
- ``("flows", None)``: the UDP conntrack entries as (original destination, source port, reply source);
- ``("mute-dns", None)``: a resolver on 127.0.0.1:53 that never answers.

One backend instance of each serves every action, as in one agent process. Prints one JSON line per
action (``action``, ``ok``, ``error``, ``ms``, ``log``: the proxy's and firewall's log messages during
the action, plus ``http`` or ``flows``); exits 1 if any failed.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from kr_core.backends import BackendContext
from kr_core.changes import ChangeSet
from kr_core.config import AgentConfig
from kr_plugins.firewall.iptables import IptablesFirewall
from kr_plugins.proxy.iptables import IptablesProxy

log = logging.getLogger("pxdriver")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def get(port: int) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return {"status": response.status, "body": json.loads(response.read()),
                    "weight": response.headers.get("X-Load-Balancing-Endpoint-Weight")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": json.loads(exc.read()),
                "weight": exc.headers.get("X-Load-Balancing-Endpoint-Weight")}
    except OSError as exc:
        return {"status": None, "error": str(exc)}


def drop_forever(sock: socket.socket) -> None:
    while True:
        sock.recvfrom(512)


def flows() -> list[list[str]]:
    listed = subprocess.run(["conntrack", "-L", "-p", "udp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in listed.splitlines():
        fields = re.findall(r"(src|dst|sport|dport)=(\S+)", line)
        original, reply = dict(fields[:4]), dict(fields[4:8])
        found.append([original["dst"], original["sport"], reply["src"]])
    return sorted(found)


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    collect = Collect()
    for name in ("kr_plugins.proxy", "kr_plugins.firewall"):
        logging.getLogger(name).addHandler(collect)
    with open(sys.argv[1], "rb") as stream:
        options, actions = pickle.load(stream)
    config = AgentConfig(node_name="node-a", plugins=("proxy.iptables", "firewall.iptables"), options=options)
    proxy = IptablesProxy(BackendContext(config, lambda: None))
    proxy.start()
    firewall: IptablesFirewall | None = None
    failed = False
    for action, arg in actions:
        collect.messages = []
        started = time.monotonic()
        result: dict[str, object] = {"action": action, "ok": True, "error": None}
        try:
            if action == "sync":
                desired, full = arg
                proxy.sync(desired, full=full, changed=ChangeSet())
            elif action == "fw-sync":
                if firewall is None:
                    firewall = IptablesFirewall(BackendContext(config, lambda: None))
                    firewall.start()
                desired, full = arg
                firewall.sync(desired, full=full, changed=ChangeSet())
            elif action == "cleanup":
                proxy.cleanup()
            elif action == "http":
                result["http"] = get(arg)
            elif action == "udp":
                ip, port, sport = arg
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind(("0.0.0.0", sport))
                    sock.sendto(b"kr", (ip, port))
            elif action == "flows":
                result["flows"] = flows()
            elif action == "mute-dns":
                mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                mute.bind(("127.0.0.1", 53))
                threading.Thread(target=drop_forever, args=(mute,), daemon=True).start()
            else:
                raise ValueError(action)
        except Exception as exc:  # reported to the test
            log.exception("%s failed", action)
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            failed = True
        result["ms"] = round((time.monotonic() - started) * 1000, 1)
        result["log"] = list(collect.messages)
        print(json.dumps(result), flush=True)
    proxy.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
