"""The lab's service-proxy e2e suite against ``proxy.ipvs``, in the UML guest kernel (the host has no IPVS).

``tests/lab/test_lab_proxy.py`` runs a three-node lab with real traffic; on the host it uses
``proxy.iptables``. Here one guest boot runs that same module inside the guest with
``KR_LAB_PROXY=proxy.ipvs``: a master, three agents running ``routing.static,proxy.ipvs`` with
iptables-legacy around IPVS (the guest kernel has no nf_tables), an external client and the echo pods,
all in the guest's namespaces; the repository's session guards then watch the guest's root namespace.
The module must pass there with nothing skipped. On failure the assertion shows the guest's pytest
output, which holds the tails of the agents' logs (the lab's state dir is on the guest's tmpfs and dies
with it).

Cost: ~75-95 s on the CI machine kind (2 cores; one guest CPU, boot ~3-5 s, the rest is the suite at
UML speed), against ~15 s for the host run. Skips with ``unavailable_reason()`` where no guest can boot.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from kr_lab import guest

REPO = Path(__file__).resolve().parents[2]
REASON = guest.unavailable_reason()
MODULE = "tests/lab/test_lab_proxy.py"
GUEST_TIMEOUT = 720.0  # the run takes 75-95 s; a loaded machine may take several times that


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.timeout(GUEST_TIMEOUT + 60)
def test_lab_proxy_suite_passes_on_proxy_ipvs(record_property: pytest.RecordProperty) -> None:
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-p", "pytest_timeout",
                   MODULE]
    started = time.monotonic()
    result = guest.run_in_guest(
        # the console carries the kernel's messages too: IPVS logs every packet to a virtual service
        # without real servers ("no destination available", KERN_ERR), which the suite provokes on
        # purpose; keep them out of pytest's output
        ["/bin/sh", "-c", 'echo 3 > /proc/sys/kernel/printk && exec "$@"', "sh", *pytest_argv],
        cwd=str(REPO), timeout=GUEST_TIMEOUT,
        memory_mb=1536,  # a master, three agents, the echo pods and the test process: each one a Python
        # no entry-point scan of every installed distribution: slow through hostfs under UML
        env={"KR_IN_GUEST": "1", "KR_LAB_PROXY": "proxy.ipvs", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    total = time.monotonic() - started
    record_property("guest_boot_seconds", round(result.boot_seconds, 2))
    record_property("guest_seconds", round(result.seconds, 2))
    print(f"guest: boot to command {result.boot_seconds:.1f} s, run {result.seconds:.1f} s, test {total:.1f} s")
    assert result.returncode == 0, f"{MODULE} with proxy.ipvs failed in the guest:\n{result.output}"
    summary = result.output.strip().splitlines()[-1]
    # every test ran and passed: none skipped (a skip would hide a backend the suite did not reach)
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in [\d.]+s.*", summary), result.output
