"""Deleting conntrack entries with the ``conntrack`` tool, in the network namespace kr runs in.

A UDP "connection" has no end the kernel can see: after a service's endpoint goes away, packets of an
existing flow keep the NAT target recorded in its conntrack entry until the entry times out. Deleting
the entries makes the next packet a new flow that the current rules send to a live endpoint.

Invariant: only UDP entries matching every given field are deleted; nothing matching is not an error.
"""

from __future__ import annotations

import re

from kr_plugins.kernel.command import CommandError, run_unchecked

_DELETED = re.compile(r"(\d+) flow entries have been deleted")


def delete_udp_flows(*, orig_dst: str | None = None, orig_port_dst: int | None = None,
                     dst_nat: str | None = None) -> int:
    """Delete the UDP entries whose original destination is ``orig_dst`` (and port ``orig_port_dst``)
    and, when given, that were DNATed to ``dst_nat``; return how many were deleted."""
    if orig_dst is None and orig_port_dst is None and dst_nat is None:
        raise ValueError("refusing to delete every UDP flow: name a destination, a port or a NAT target")
    argv = ["conntrack", "-D", "-p", "udp"]
    if orig_dst is not None:
        argv += ["--orig-dst", orig_dst]
    if orig_port_dst is not None:
        argv += ["--orig-port-dst", str(orig_port_dst)]
    if dst_nat is not None:
        argv += ["--dst-nat", dst_nat]
    done = run_unchecked(argv)
    deleted = _DELETED.search(done.stderr)
    if deleted is None or done.returncode not in (0, 1):  # 1 with "0 flow entries": nothing matched
        raise CommandError(f"{' '.join(argv)} failed with exit code {done.returncode}: {done.stderr.strip()}")
    return int(deleted.group(1))
