"""Writing a kubeconfig that points the official client (and ``kr run``) at an API server URL."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_kubeconfig(url: str, path: str | Path, name: str = "kr-lab") -> Path:
    """Write a credential-less kubeconfig for ``url`` to ``path`` and return the path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    target = Path(path)
    target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target
