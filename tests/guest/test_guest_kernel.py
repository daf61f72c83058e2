"""The UML guest harness (kr_lab.guest), from the host: one guest boot proves what the host kernel cannot.

The host kernel has no IPVS and no dummy links; ``test_in_guest_kernel`` boots the guest once and runs
``tests/guest/inguest`` inside it (IPVS through pyroute2 with real TCP between veth namespaces, a dummy
link, iptables-legacy/ipset/conntrack next to IPVS, and a host root that refuses writes even through a
read-write hostfs mount). The other tests cost no full boot: the module index the guest's modprobe uses,
the console parsing, and a timeout that must leave no process and no file behind.
Everything skips with ``unavailable_reason()`` where no guest can be booted.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kr_lab import guest

REPO = Path(__file__).resolve().parents[2]
REASON = guest.unavailable_reason()
needs_guest = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@needs_guest
def test_in_guest_kernel(record_property: pytest.RecordProperty) -> None:
    probe = f"kr-guest-write-probe-{secrets.token_hex(4)}"
    started = time.monotonic()
    result = guest.run_in_guest(
        # console messages below KERN_CRIT stay off the console: IPVS logs "no destination available"
        # (KERN_ERR) for what the proxy tests provoke, which would land between pytest's lines
        ["/bin/sh", "-c", 'echo 3 > /proc/sys/kernel/printk && exec "$@"', "sh",
         sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-p", "pytest_timeout",
         "tests/guest/inguest"],
        cwd=str(REPO), timeout=240,
        # no entry-point scan of every installed distribution: ~1.3 s through hostfs under UML
        env={"KR_IN_GUEST": "1", "KR_GUEST_PROBE": probe, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    total = time.monotonic() - started
    record_property("guest_boot_seconds", round(result.boot_seconds, 2))
    record_property("guest_seconds", round(result.seconds, 2))
    print(f"guest: boot to command {result.boot_seconds:.1f} s, run {result.seconds:.1f} s, test {total:.1f} s; "
          f"modules missing in this kernel: {' '.join(result.missing_modules) or 'none'}")
    assert result.returncode == 0, result.output
    summary = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in [\d.]+s.*", summary), result.output  # none skipped or failed
    assert not (REPO / "tests" / "guest" / "inguest" / probe).exists()
    assert {"ip_vs", "ip_vs_rr", "dummy"}.isdisjoint(result.missing_modules)


@needs_guest
def test_a_timeout_leaves_no_process_and_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: object, **kwargs: object) -> str:
        made.append(real_mkdtemp(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(guest.GuestTimeout):
        guest.run_in_guest(["sleep", "600"], cwd="/", timeout=1.0)  # killed while the kernel boots
    assert len(made) == 1 and not os.path.exists(made[0])
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if made[0].encode() in cmdline:
            survivors.append(pid)
    assert survivors == []


@needs_guest
def test_module_index_resolves_aliases_and_dependencies() -> None:
    version = guest.uml_version()
    assert version is not None
    index = guest._Modules(os.path.join(guest.UML_MODULES_DIR, version))
    assert index.resolve("rtnl-link-dummy") == ["dummy"]
    assert index.resolve("ip_set_hash:ip,port,ip") == ["ip_set_hash_ipportip"]
    assert index.resolve("ip-vs-rr") == ["ip_vs_rr"]
    assert index.resolve("no_such_module") == []
    order = [os.path.basename(path) for path in index.load_order("ip_vs_rr")]
    assert order[-1] == "ip_vs_rr.ko" and order.index("nf_conntrack.ko") < order.index("ip_vs.ko")


def test_console_parsing_takes_only_this_runs_markers() -> None:
    marker = "KR-GUEST-0123456789abcdef"
    console = "\n".join([
        "kernel noise", f"{marker}-MISSING ip_vs_twos", f"{marker}-BEGIN", "hello",
        "KR-GUEST-ffffffffffffffff-EXIT 0", f"{marker}-EXIT 3", "reboot: Power down", ""])
    result = guest._parse(console, marker, boot_seconds=1.0, seconds=2.0)
    assert (result.returncode, result.output, result.missing_modules) == (
        3, "hello\nKR-GUEST-ffffffffffffffff-EXIT 0\n", ("ip_vs_twos",))
    with pytest.raises(guest.GuestError, match="stopped before the command finished"):
        guest._parse(f"{marker}-BEGIN\nKernel panic\n", marker, boot_seconds=1.0, seconds=2.0)
    with pytest.raises(guest.GuestError, match="init failed: overlay on /etc"):
        guest._parse(f"{marker}-FAILED overlay on /etc\n", marker, boot_seconds=1.0, seconds=2.0)
