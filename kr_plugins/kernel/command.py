"""Running the kernel's command-line tools (iptables-restore, ipset, ...) with input, failing loudly.

Invariant: a tool that is missing, times out or exits non-zero raises ``CommandError`` naming the
command and quoting its stderr; nothing is retried here (the agent retries whole syncs).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

#: Tools print parseable, untranslated output in the C locale.
_ENV = {**os.environ, "LC_ALL": "C"}


class CommandError(RuntimeError):
    """A kernel tool failed; the message names the command and quotes its stderr."""


class ToolMissing(CommandError):
    """The tool is not installed."""


def run(argv: Sequence[str], input_text: str | None = None, timeout: float = 60.0) -> str:
    """Run ``argv`` with ``input_text`` on stdin and return its stdout."""
    try:
        done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout,
                              env=_ENV, check=False)
    except FileNotFoundError as exc:
        raise ToolMissing(f"{argv[0]} not found: install it (scripts/setup.sh does)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise CommandError(f"{' '.join(argv)} failed with exit code {done.returncode}: {done.stderr.strip()}")
    return done.stdout
