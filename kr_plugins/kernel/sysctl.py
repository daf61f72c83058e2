"""Setting one sysctl of the network namespace the agent runs in.

Keys use the slash form (``net/ipv4/conf/kr-vxlan/rp_filter``) because interface names may contain dots.
Invariant: a value is written only when it differs from what the kernel reports, so repeated syncs do
not write at all; ``net/*`` keys are per network namespace, so this never reaches another namespace.
"""

from __future__ import annotations

from pathlib import Path

PROC_SYS = Path("/proc/sys")


def ensure_sysctl(key: str, value: str) -> bool:
    """Make sysctl ``key`` read ``value``; return whether it had to be written."""
    path = PROC_SYS / key
    if path.read_text(encoding="ascii").strip() == value:
        return False
    path.write_text(value + "\n", encoding="ascii")
    return True

