"""Plugin loading: every error an operator can make is reported plainly, and hook specs are documented."""

from __future__ import annotations

import ast
import inspect
import pathlib
import types

import click
import pytest
from click.testing import CliRunner

from kr_core import hookspecs
from kr_core.backends import Backend, BackendSpec, resolve_backends, slot_sort_key, watched_kinds
from kr_core.cli import main
from kr_core.errors import PluginError
from kr_core.hookspecs import hookimpl
from kr_core.plugins import PluginHost, parse_plugin_list

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Dummy(Backend):
    def sync(self, desired, *, full, changed):  # type: ignore[no-untyped-def]
        pass

    def cleanup(self) -> None:
        pass


def plugin_offering(*specs: BackendSpec) -> types.SimpleNamespace:
    @hookimpl
    def kr_backends():  # type: ignore[no-untyped-def]
        return list(specs)

    return types.SimpleNamespace(kr_backends=kr_backends)


def spec(slot: str, name: str, watches: frozenset[str] = frozenset()) -> BackendSpec:
    return BackendSpec(slot=slot, name=name, factory=Dummy, watches=watches)


def test_unknown_plugin_lists_installed() -> None:
    with pytest.raises(PluginError, match=r"unknown plugin 'routing\.nope'\. Installed plugins: .*debug\.log"):
        PluginHost().load(["routing.nope"])


def test_unknown_plugin_on_the_command_line() -> None:
    result = CliRunner().invoke(main, ["run", "--plugins", "debug.log,nope"])
    assert result.exit_code == 1
    assert "unknown plugin 'nope'" in result.output and "debug.log" in result.output


def test_two_backends_for_one_slot_name_both() -> None:
    host = PluginHost()
    host.register(plugin_offering(spec("proxy", "proxy.a")), "plugin-a")
    host.register(plugin_offering(spec("proxy", "proxy.b")), "plugin-b")
    with pytest.raises(PluginError) as excinfo:
        host.backends()
    message = str(excinfo.value)
    assert "proxy.a" in message and "proxy.b" in message and "'proxy' slot" in message


def test_hookimpl_matching_no_spec_fails_loudly() -> None:
    @hookimpl
    def kr_backend():  # type: ignore[no-untyped-def]  # misspelt: the spec is kr_backends
        return []

    host = PluginHost()
    with pytest.raises(PluginError, match="kr_backend"):
        host.register(types.SimpleNamespace(kr_backend=kr_backend), "typo")
    assert host.loaded == []


def test_hookimpl_with_unknown_argument_fails() -> None:
    @hookimpl
    def on_service_add(svc):  # type: ignore[no-untyped-def]  # the spec's argument is "service"
        pass

    with pytest.raises(PluginError, match="svc"):
        PluginHost().register(types.SimpleNamespace(on_service_add=on_service_add), "bad-args")


def test_backend_spec_validation() -> None:
    with pytest.raises(PluginError, match="unknown kinds"):
        spec("proxy", "proxy.x", frozenset({"ingresses"}))
    host = PluginHost()
    host.register(types.SimpleNamespace(kr_backends=hookimpl(lambda: ["not a spec"])), "junk")
    with pytest.raises(PluginError, match="not a BackendSpec"):
        host.backends()


def test_slot_order_and_watched_kinds() -> None:
    chosen = resolve_backends({
        "p1": [spec("firewall", "firewall.x", frozenset({"pods", "networkpolicies"}))],
        "p2": [spec("zeta", "zeta.x"), spec("alpha", "alpha.x")],
        "p3": [spec("routing", "routing.x"), spec("proxy", "proxy.x", frozenset({"services"}))],
    })
    assert [s.slot for s in chosen] == ["routing", "proxy", "firewall", "alpha", "zeta"]
    assert watched_kinds(chosen) == ("nodes", "services", "pods", "networkpolicies")
    assert sorted(["b", "firewall", "a", "routing"], key=slot_sort_key) == ["routing", "firewall", "a", "b"]


def test_option_clash_names_both_owners() -> None:
    @hookimpl
    def kr_add_options(options):  # type: ignore[no-untyped-def]
        options.add(click.Option(["--kubeconfig"]))

    host = PluginHost()
    host.register(types.SimpleNamespace(kr_add_options=kr_add_options), "clasher")
    with pytest.raises(PluginError, match=r"--kubeconfig from plugin clasher clashes with the one from kr"):
        host.add_options({"--kubeconfig": "kr"})


def test_plugin_options_appear_in_help() -> None:
    result = CliRunner().invoke(main, ["run", "--plugins", "debug.log", "--help"])
    assert result.exit_code == 0, result.output
    assert "--debug-record" in result.output and "--hostname-override" in result.output


def test_amend_hooks_chain_in_order() -> None:
    import dataclasses

    from kr_core.config import AgentConfig
    from kr_core.desired import build_desired_state

    def amender(tag: str) -> types.SimpleNamespace:
        @hookimpl
        def kr_amend_desired_state(desired):  # type: ignore[no-untyped-def]
            return dataclasses.replace(desired, extras={**desired.extras, "order": desired.extras.get("order", "") + tag})
        return types.SimpleNamespace(kr_amend_desired_state=kr_amend_desired_state)

    host = PluginHost()
    host.register(amender("a"), "first")
    host.register(amender("b"), "second")
    desired = build_desired_state({}, "node1")
    assert host.amend_desired_state(desired, {}, AgentConfig("node1", ())).extras["order"] == "ab"


def test_parse_plugin_list() -> None:
    assert parse_plugin_list(["a,b", " c ,a", ""]) == ("a", "b", "c")


def test_every_hookspec_is_documented_and_typed() -> None:
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "krouter_spec")]
    assert len(specs) >= 17
    for func in specs:
        doc = inspect.getdoc(func) or ""
        assert len(doc) > 20, f"hook {func.__name__} is undocumented"
        assert "(event)" in doc or "level-triggered" in doc.lower() or "Fires" in doc or "lifecycle" in doc, func.__name__
        sig = inspect.signature(func)
        assert sig.return_annotation is not inspect.Signature.empty, func.__name__
        for param in sig.parameters.values():
            assert param.annotation is not inspect.Parameter.empty, f"{func.__name__}({param.name}) is untyped"


def test_kr_core_never_imports_kr_plugins() -> None:
    for path in (ROOT / "kr_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("kr_plugins"), f"{path.name} imports {name}"


def test_run_flags_select_default_backends() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--run-router=false", "--run-firewall", "false", "--help"])
    assert result.exit_code == 0 and "--masquerade-all" in result.output, "proxy.iptables' options are offered"
    result = runner.invoke(main, ["run", "--run-firewall=false", "--run-service-proxy=false", "--help"])
    assert result.exit_code == 0 and "--cluster-asn" in result.output, "--run-router selects routing.bgp"
    assert "--masquerade-all" not in result.output
    result = runner.invoke(main, ["run", "--run-router=false", "--plugins", "debug.log", "--master", "http://127.0.0.1:9",
                                  "--min-sync-period", "-1"])
    assert result.exit_code == 2 and "--min-sync-period" in result.output, "--plugins overrides --run-*"


def test_cleanup_removes_what_debug_log_owns(tmp_path: pathlib.Path) -> None:
    record = tmp_path / "record.jsonl"
    record.write_text("{}\n")
    result = CliRunner().invoke(main, ["cleanup", "--plugins", "debug.log", "--debug-record", str(record)])
    assert result.exit_code == 0, result.output
    assert not record.exists()


def test_bad_bind_address_is_a_plain_error() -> None:
    result = CliRunner().invoke(main, ["run", "--plugins", "debug.log", "--master", "http://127.0.0.1:9",
                                       "--healthz-bind-address", "localhost"])
    assert result.exit_code == 1 and "--healthz-bind-address must be HOST:PORT" in result.output


def test_plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    broken = metadata.EntryPoint(name="broken.backend", value="kr_no_such_module_xyz", group="krouter.plugins")
    real = metadata.entry_points

    def entry_points(**kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("name") == "broken.backend":
            return metadata.EntryPoints([broken])
        return real(**kwargs)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    with pytest.raises(PluginError, match=r"plugin 'broken.backend' \(kr_no_such_module_xyz\) failed to load: No module"):
        PluginHost().load(["broken.backend"])


def test_hook_failure_names_the_plugin_and_hook_args_are_optional() -> None:
    @hookimpl
    def kr_add_options():  # type: ignore[no-untyped-def]  # takes none of the spec's arguments: allowed
        pass

    @hookimpl
    def kr_backends():  # type: ignore[no-untyped-def]
        raise RuntimeError("no kernel support")

    host = PluginHost()
    host.register(types.SimpleNamespace(kr_add_options=kr_add_options, kr_backends=kr_backends), "flaky")
    assert host.add_options({}) == ()
    with pytest.raises(PluginError, match="plugin 'flaky' failed in kr_backends: RuntimeError: no kernel support"):
        host.backends()


def test_shared_options_are_added_once_per_group_and_still_clash_with_others() -> None:
    def plugin():  # type: ignore[no-untyped-def]
        @hookimpl
        def kr_add_options(options):  # type: ignore[no-untyped-def]
            options.add_shared(click.Option(["--masquerade-all"], is_flag=True), group="proxy backends")
        return types.SimpleNamespace(kr_add_options=kr_add_options)

    host = PluginHost()
    host.register(plugin(), "proxy-a")
    host.register(plugin(), "proxy-b")
    assert [o.opts for o in host.add_options({})] == [["--masquerade-all"]]
    with pytest.raises(PluginError, match="--masquerade-all"):
        host.add_options({"--masquerade-all": "kr"})


def test_plugins_add_command_groups_imported_only_when_used() -> None:
    from kr_core.plugins import plugin_commands

    assert plugin_commands()["bgp"] == "kr_plugins.routing.bgpcli:bgp"
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "bgp" in result.output
    result = CliRunner().invoke(main, ["bgp", "peers", "--help"])
    assert result.exit_code == 0 and "--bgp-run-dir" in result.output
