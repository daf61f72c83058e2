"""``python -m kr_apiserver`` as a separate process: port file, seeds, admin endpoints, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_helpers import HOST, admin
from kubernetes import client, watch

REPO = Path(__file__).resolve().parents[2]

SEED = """\
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a, labels: {zone: a}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: team, resourceVersion: "12345"}
  addressType: IPv4
  endpoints: [{addresses: [10.244.0.5]}]
"""


@pytest.fixture
def process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kr_apiserver", "--listen", HOST, "--port", "0", "--port-file", str(port_file),
         "--bookmark-interval", "0.2", "--history", "10", "--seed", str(seed)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server did not write its port file"
            time.sleep(0.05)
        yield proc, f"http://{HOST}:{int(port_file.read_text())}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def test_module_entry_point(process: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = process
    assert proc.stdout is not None and proc.stdout.readline().strip() == url
    with client.ApiClient(client.Configuration(host=url)) as api_client:
        core = client.CoreV1Api(api_client)
        assert [n.metadata.name for n in core.list_node().items] == ["node-a"]
        slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice("team").items
        assert [s.metadata.name for s in slices] == ["web-1"]
        version = core.list_node().metadata.resource_version
        stream = watch.Watch().stream(core.list_node, resource_version=version, allow_watch_bookmarks=True,
                                      timeout_seconds=5)
        assert next(stream)["type"] == "BOOKMARK"  # --bookmark-interval 0.2 took effect
        stream.close()
        assert admin(url, "/_kr/stats")["requests"]["nodes"]["watch"] == 1

    proc.terminate()
    assert proc.wait(timeout=5) == 0


def test_bad_seed_file_fails_fast(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    result = subprocess.run(
        [sys.executable, "-m", "kr_apiserver", "--port", "0", "--seed", str(seed)],
        cwd=REPO, capture_output=True, text=True, timeout=15,
    )
    assert result.returncode == 2 and "Deployment" in result.stderr
