"""Building the official Kubernetes client's ApiClient from kr's flags.

Precedence, as kube-router and kube-proxy do it: ``--kubeconfig`` (its server overridden by ``--master``
when both are given), else ``--master`` alone (plain HTTP or HTTPS without credentials), else the
in-cluster service account when running in a pod, else ``$KUBECONFIG`` or ``~/.kube/config``.
"""

from __future__ import annotations

import os

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from kr_core.errors import ConfigError


def make_api_client(kubeconfig: str | None = None, master: str | None = None) -> client.ApiClient:
    """Return an ApiClient for the flags given; raise ``ConfigError`` when none of the sources works."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        elif master:
            pass
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise ConfigError(f"cannot configure the Kubernetes client: {exc}") from exc
    if master:
        configuration.host = master.rstrip("/")
    return client.ApiClient(configuration)
