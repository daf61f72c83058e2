"""A third-party plugin distribution, built and pip-installed for real, is listed and selected by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kr_apiserver import APIServer

from .conftest import KR

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kr-example-backend"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the example's wheel and pip-install it into a directory of its own (put on PYTHONPATH)."""
    work = tmp_path_factory.mktemp("third-party")
    source = work / "source"
    shutil.copytree(EXAMPLE, source)  # build outside the checkout: no build/ or egg-info left in the tree
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "wheels"), str(source)],
                   check=True, timeout=120)
    wheels = list((work / "wheels").glob("kr_example_backend-*.whl"))
    assert len(wheels) == 1, wheels
    site = work / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheels[0])], check=True, timeout=120)
    return site


def kr(site: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([KR, *args], env=env, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def test_kr_plugins_lists_the_installed_plugin(plugin_site: Path) -> None:
    result = kr(plugin_site, "plugins", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["example.table-proxy"] == {"name": "example.table-proxy", "slot": "proxy",
                                           "distribution": "kr-example-backend", "version": "0.1.0"}
    assert rows["debug.log"]["distribution"] == "krouter"
    table = kr(plugin_site, "plugins", timeout=60).stdout
    assert "example.table-proxy" in table and "kr-example-backend" in table


def test_kr_run_selects_the_plugin(plugin_site: Path, apiserver: APIServer, kubeconfig: Path, tmp_path: Path) -> None:
    table_file = tmp_path / "table.json"
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    agent = subprocess.Popen(
        [KR, "run", "--plugins", "example.table-proxy", "--table-file", str(table_file), "--kubeconfig",
         str(kubeconfig), "--hostname-override", "kube-node1", "--healthz-bind-address", "off",
         "--metrics-bind-address", "off", "--min-sync-period", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while not table_file.exists() and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.05)
        assert table_file.exists(), "the third-party backend never synced"
        table = json.loads(table_file.read_text())
        assert table["node"] == "kube-node1"
        assert table["services"]["10.96.0.10:80/TCP"] == ["10.1.2.3:9090", "10.1.3.2:9091"]
        # it asked only for services and endpointslices (and the agent always watches nodes)
        assert apiserver.stats.requests("pods", "list") == 0
        assert apiserver.stats.requests("networkpolicies", "list") == 0
        assert apiserver.stats.requests("services", "list") == 1
    finally:
        agent.terminate()
        output = agent.communicate(timeout=10)[0]
    assert agent.returncode == 0, output
    assert "backend example.table-proxy (slot proxy) started" in output


def test_plugin_options_are_enforced(plugin_site: Path) -> None:
    result = kr(plugin_site, "cleanup", "--plugins", "example.table-proxy", timeout=60)
    assert result.returncode == 2 and "--table-file" in result.stderr
    helped = kr(plugin_site, "run", "--plugins", "example.table-proxy", "--help", timeout=60)
    assert helped.returncode == 0 and "--table-file" in helped.stdout
