#!/usr/bin/env python
"""``proxy_scale.py --backend proxy.ipvs`` inside the UML guest kernel (this host's kernel has no IPVS).

Boots one guest with ``kr_lab.guest.run_in_guest`` (a read-only view of this machine, iptables-legacy
only) and runs the benchmark there as root, with the kernel's console messages quieted (IPVS logs every
packet to a service without real servers). The guest's files die with it, so the benchmark's JSON is
printed between two marker lines and, with ``--json``, written here on the host; the console (the
benchmark's progress and result table) is relayed once the guest has powered off. The exit code is the
benchmark's in the guest.

Figures taken this way are UML's: one CPU, and every system call of a guest process is a ptrace round
trip, so they compare with each other, not with host runs. Usage (root):

    .venv/bin/python benchmarks/proxy_ipvs_guest.py [--services 1000 --nodes 20 --changes 20] [--json F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kr_lab import guest

GUEST_JSON = "/tmp/kr-proxy-ipvs-guest.json"  # on the guest's /tmp overlay
BEGIN, END = "--- proxy_scale JSON begin ---", "--- proxy_scale JSON end ---"
#: printk quiet, the benchmark, then its JSON between the markers; the benchmark's exit code wins.
SCRIPT = (f'echo 3 > /proc/sys/kernel/printk; rm -f {GUEST_JSON}; "$@"; rc=$?; '
          f'if [ -f {GUEST_JSON} ]; then echo "{BEGIN}"; cat {GUEST_JSON}; echo; echo "{END}"; fi; exit $rc')


def guest_argv(args: argparse.Namespace) -> list[str]:
    benchmark = [str(REPO / ".venv/bin/python"), "benchmarks/proxy_scale.py", "--backend", "proxy.ipvs",
                 "--services", str(args.services), "--nodes", str(args.nodes), "--changes", str(args.changes),
                 "--json", GUEST_JSON, *args.extra]
    return ["/bin/sh", "-c", SCRIPT, "sh", *benchmark]


def split_json(output: str) -> tuple[str, str | None]:
    """(the console without the JSON block, the JSON text or None)."""
    if BEGIN not in output or END not in output:
        return output, None
    head, _, rest = output.partition(BEGIN)
    body, _, tail = rest.partition(END)
    return head + tail.lstrip("\n"), body.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--memory-mb", type=int, default=3072, help="the guest's RAM")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the guest is killed")
    parser.add_argument("--json", type=Path, help="write the benchmark's JSON results here (on the host)")
    parser.add_argument("extra", nargs="*", help="more proxy_scale.py options, after --")
    args = parser.parse_args()
    reason = guest.unavailable_reason()
    if reason is not None:
        parser.error(reason)
    try:
        result = guest.run_in_guest(guest_argv(args), cwd=str(REPO), env={"KR_IN_GUEST": "1"},
                                    memory_mb=args.memory_mb, timeout=args.timeout)
    except guest.GuestError as exc:
        print(exc, file=sys.stderr)
        return 1
    console, json_text = split_json(result.output)
    print(console, end="" if console.endswith("\n") else "\n")
    if args.json and json_text is not None:
        args.json.write_text(json_text + "\n")
        print(f"JSON (from the guest): {args.json}")
    print(f"guest: boot to command {result.boot_seconds:.1f} s, whole run {result.seconds:.1f} s, "
          f"exit code {result.returncode}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
