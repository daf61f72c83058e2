"""The ``kr`` command line (click).

``kr run`` and ``kr cleanup`` grow options from the plugins they load: the plugin names are read from the
command line first (``--plugins``, or kube-router's ``--run-router``/``--run-service-proxy``/
``--run-firewall``), those plugins are loaded, their ``kr_add_options`` hooks add options, and only then is
the whole command line parsed, so ``kr run --plugins x --help`` documents plugin x's options too.

Invariant: an operator error (unknown plugin, conflicting backends, a bad flag value, an unreachable
kubeconfig) prints one plain ``Error: ...`` line and exits 1, before anything touches the datapath.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
from types import MappingProxyType
from typing import Any

import click

import kr_core
from kr_core.config import AgentConfig
from kr_core.errors import ConfigError, KrError
from kr_core.plugins import PluginHost, describe_installed, parse_plugin_list, plugin_commands
from kr_core.tables import rows_text

log = logging.getLogger("kr")

#: kube-router's --run-* flags and the kr plugins they select.
DEFAULT_PLUGINS = (
    ("run_router", "routing.bgp"),
    ("run_service_proxy", "proxy.iptables"),
    ("run_firewall", "firewall.iptables"),
)


def setup_logging(verbosity: int) -> None:
    """One readable line per event; -v shows kr's debug lines, -vv everyone's."""
    level = logging.DEBUG if verbosity else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    if verbosity < 2:
        for noisy in ("urllib3", "kubernetes"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_bind_address(value: str, flag: str) -> tuple[str, int] | None:
    """``HOST:PORT`` -> (host, port); ``off`` disables the listener; port 0 picks a free one."""
    if value in ("", "off"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} must be HOST:PORT or 'off', not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def selection_options() -> list[click.Option]:
    """The options that decide which plugins load (read before the full parse)."""
    options = [
        click.Option(["--plugins"], multiple=True, metavar="A,B,...",
                     help="Plugins to load (entry points in krouter.plugins); overrides --run-*."),
    ]
    for flag, plugin in DEFAULT_PLUGINS:
        options.append(click.Option(
            ["--" + flag.replace("_", "-")], type=click.BOOL, is_flag=False, flag_value=True, default=True,
            show_default=True, help=f"kube-router compatible: load {plugin} (when --plugins is not given)."))
    return options


def selected_plugins(values: dict[str, Any]) -> tuple[str, ...]:
    if values.get("plugins"):
        return parse_plugin_list(values["plugins"])
    return tuple(plugin for flag, plugin in DEFAULT_PLUGINS if values.get(flag, True))


class LazyGroup(click.Group):
    """A command group imported only when used (``kr lab`` pulls in the lab; ``kr run`` need not)."""

    def __init__(self, name: str, target: str, help: str) -> None:  # noqa: A002 (click's name)
        super().__init__(name=name, help=help)
        self._target = target

    def _group(self) -> click.Group:
        module, _, attr = self._target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._group().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._group().get_command(ctx, cmd_name)


class PluginCommand(click.Command):
    """A command whose options grow with the plugins selected on its own command line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_params = list(self.params)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        probe = click.Command("probe", params=selection_options(),
                              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        with probe.make_context(ctx.info_name, list(args), resilient_parsing=True) as probe_ctx:
            names = selected_plugins(probe_ctx.params)
        host = PluginHost()
        self.params = list(self.base_params)
        try:
            host.load(names)
            taken = {flag: "kr" for param in self.params for flag in (*param.opts, *param.secondary_opts)}
            self.params.extend(host.add_options(taken))
        except KrError as exc:
            if "--help" not in args:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"(plugin options not shown: {exc})", err=True)
        ctx.meta["kr.host"] = host
        ctx.meta["kr.plugins"] = names
        return super().parse_args(ctx, args)


def node_name_option() -> click.Option:
    return click.Option(["--hostname-override"], envvar="NODE_NAME", show_envvar=True,
                        help="This node's name in the API (default: $NODE_NAME, else the hostname).")


def build_config(ctx: click.Context, params: dict[str, Any]) -> AgentConfig:
    node_name = params.get("hostname_override") or socket.gethostname()
    config = AgentConfig(node_name=node_name, plugins=ctx.meta["kr.plugins"], options=MappingProxyType(dict(params)))
    ctx.meta["kr.host"].configure(config)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kr_core.__version__, "--version", prog_name="kr")
def main() -> None:
    """kr: a distributed load balancer, firewall and router for Kubernetes nodes."""


@main.command(cls=PluginCommand, params=[
    *selection_options(),
    node_name_option(),
    click.Option(["--kubeconfig"], type=click.Path(dir_okay=False),
                 help="Path to a kubeconfig (default: in-cluster, else $KUBECONFIG or ~/.kube/config)."),
    click.Option(["--master"], help="API server URL; overrides the kubeconfig's server."),
    click.Option(["--min-sync-period"], type=click.FloatRange(0), default=1.0, show_default=True,
                 help="Seconds between two syncs at least; bursts of changes coalesce."),
    click.Option(["--sync-period"], type=click.FloatRange(1), default=300.0, show_default=True,
                 help="Seconds between periodic full resyncs."),
    click.Option(["--watch-stall-timeout"], type=click.FloatRange(1), default=120.0, show_default=True,
                 help="Reconnect a watch that sent nothing (not even a bookmark) for this long."),
    click.Option(["--service-proxy-name"], default=None,
                 help="Proxy services labelled service.kubernetes.io/service-proxy-name with this value."),
    click.Option(["--healthz-bind-address"], default="127.0.0.1:20244", show_default=True,
                 help="HOST:PORT for /healthz ('off' disables, port 0 picks one)."),
    click.Option(["--metrics-bind-address"], default="127.0.0.1:20245", show_default=True,
                 help="HOST:PORT for /metrics ('off' disables, port 0 picks one)."),
    click.Option(["-v", "--verbose"], count=True, help="More log lines (-vv: libraries too)."),
])
@click.pass_context
def run(ctx: click.Context, **params: Any) -> None:
    """Run the agent on this node."""
    from kr_core.agent import Agent, AgentSettings  # the agent pulls in the kubernetes client: load it late
    from kr_core.kubeclient import make_api_client
    from kr_core.watcher import WatchSettings

    setup_logging(params["verbose"])
    try:
        config = build_config(ctx, params)
        settings = AgentSettings(
            min_sync_interval=params["min_sync_period"],
            resync_interval=params["sync_period"],
            stall_timeout=params["watch_stall_timeout"],
            watch=WatchSettings(stall_timeout=params["watch_stall_timeout"]),
            healthz=parse_bind_address(params["healthz_bind_address"], "--healthz-bind-address"),
            metrics=parse_bind_address(params["metrics_bind_address"], "--metrics-bind-address"),
            proxy_name=params["service_proxy_name"],
        )
        api_client = make_api_client(params["kubeconfig"], params["master"])
        agent = Agent(config, ctx.meta["kr.host"], api_client, settings)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    def on_signal(signum: int, frame: object) -> None:
        if agent.runner.stopping:  # a second signal: the operator insists
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: stopping (the datapath stays programmed); signal again to exit at once",
                 signal.Signals(signum).name)
        agent.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    log.info("kr %s on node %s with plugins %s", kr_core.__version__, config.node_name, ", ".join(config.plugins))
    try:
        agent.run()
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command(cls=PluginCommand, params=[
    *selection_options(),
    node_name_option(),
    click.Option(["-v", "--verbose"], count=True, help="More log lines."),
])
@click.pass_context
def cleanup(ctx: click.Context, **params: Any) -> None:
    """Remove everything the selected plugins' backends own on this node."""
    from kr_core.backends import BackendContext

    setup_logging(params["verbose"])
    host: PluginHost = ctx.meta["kr.host"]
    try:
        config = build_config(ctx, params)
        specs = host.backends()
        failures = []
        for spec in reversed(specs):  # firewall first, routing last: undo in the reverse of build order
            try:
                spec.factory(BackendContext(config, lambda: None)).cleanup()
                log.info("cleaned up %s", spec.name)
            except Exception as exc:
                log.error("cleanup of %s failed: %s", spec.name, exc)
                failures.append(spec.name)
        host.cleanup(config)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    if failures:
        raise click.ClickException(f"cleanup failed for {', '.join(failures)}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List the installed plugins: name, slot, distribution and version."""
    click.echo(rows_text(describe_installed(), ("name", "slot", "distribution", "version"), as_json))


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def apiserver(args: tuple[str, ...]) -> None:
    """Run the Kubernetes API stand-in (``kr apiserver --help`` for its options)."""
    from kr_apiserver.__main__ import main as apiserver_main

    sys.exit(apiserver_main(list(args)))


main.add_command(LazyGroup("lab", "kr_lab.cli:lab",
                           "A whole cluster on this machine, in network namespaces, with a real kr agent per node."))
for _name, _target in plugin_commands().items():  # plugins' own commands (entry points krouter.commands)
    if _name not in main.commands:
        main.add_command(LazyGroup(_name, _target, f"Commands of the plugin module {_target.partition(':')[0]}."))


@main.command()
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (remove it with `kr lab down`).")
@click.option("--state", "state_path", default=".kr-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--routing", type=click.Choice(["static", "bgp"]), default="static", show_default=True,
              help="Route pod CIDRs with routing.static or with routing.bgp (BIRD, iBGP full mesh).")
def demo(keep: bool, state_path: str, routing: str) -> None:
    """Bring up the seed's cluster in namespaces and show pods reaching each other across nodes."""
    from kr_lab.demo import run_demo

    run_demo(state_path, keep, routing)


@main.command()
def version() -> None:
    """Print kr's version."""
    click.echo(f"kr {kr_core.__version__}")


if __name__ == "__main__":
    sys.exit(main())
