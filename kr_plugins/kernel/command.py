"""Running the kernel's command-line tools (iptables-restore, ipset, ...) with input, failing loudly.

Invariant: a tool that is missing, times out or exits non-zero raises ``CommandError`` naming the
command and quoting its stderr; nothing is retried here (the agent retries whole syncs). A ``Feed``
raises the same way, from ``close``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO

from kr_core.errors import KrError

#: Tools print parseable, untranslated output in the C locale.
_ENV = {**os.environ, "LC_ALL": "C"}


class CommandError(KrError):
    """A kernel tool failed; the message names the command and quotes its stderr."""


class ToolMissing(CommandError):
    """The tool is not installed."""


def run(argv: Sequence[str], input_text: str | None = None, timeout: float = 60.0) -> str:
    """Run ``argv`` with ``input_text`` on stdin and return its stdout."""
    done = run_unchecked(argv, input_text, timeout)
    if done.returncode != 0:
        raise CommandError(f"{' '.join(argv)} failed with exit code {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def run_unchecked(argv: Sequence[str], input_text: str | None = None,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return how it ended, whatever its exit code (for tools whose codes mean more
    than success or failure); a missing tool or a timeout still raises."""
    try:
        return subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout,
                              env=_ENV, check=False)
    except FileNotFoundError as exc:
        raise ToolMissing(f"{argv[0]} not found: install it (scripts/setup.sh does)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc


class Feed:
    """A tool started now that reads its input while the caller is still producing it: the tool's work
    (in its own process, on another core) overlaps the caller's. ``close`` ends the input and waits;
    ``abort`` kills the tool instead (input it has not committed is lost). ``timeout`` counts from the
    start: a tool still running then is killed, so a hung tool cannot block a writer for ever."""

    def __init__(self, argv: Sequence[str], timeout: float = 60.0) -> None:
        self._argv = list(argv)
        self._timeout = timeout
        self._stopped_early = False
        try:
            self._process = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True, env=_ENV)
        except FileNotFoundError as exc:
            raise ToolMissing(f"{argv[0]} not found: install it (scripts/setup.sh does)") from exc
        self._deadline = time.monotonic() + timeout
        self._watchdog = threading.Timer(timeout, self._process.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def abort(self) -> None:
        """Kill the tool and wait for it."""
        self._watchdog.cancel()
        self._process.kill()
        self._process.communicate()

    def write(self, text: str) -> None:
        stdin: IO[str] | None = self._process.stdin
        if self._stopped_early or stdin is None:
            return
        try:
            stdin.write(text)
        except BrokenPipeError:  # the tool exited (an error): close() reports it
            self._stopped_early = True

    def close(self) -> None:
        """End the input, wait for the tool, and raise ``CommandError`` if it failed."""
        try:
            _, stderr = self._process.communicate(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, stderr = self._process.communicate()
        finally:
            self._watchdog.cancel()
        if time.monotonic() >= self._deadline and self._process.returncode != 0:
            raise CommandError(f"{' '.join(self._argv)} did not finish within {self._timeout:.0f} s")
        if self._process.returncode != 0:
            raise CommandError(f"{' '.join(self._argv)} failed with exit code {self._process.returncode}: "
                               f"{stderr.strip()}")
