"""Errors kr reports to operators.

Invariant: every error raised on purpose by kr carries a message a network engineer can act on without
reading a traceback; the CLI prints ``str(error)`` and exits non-zero.
"""


class KrError(Exception):
    """Base class for errors with an operator-facing message."""


class PluginError(KrError):
    """A plugin could not be found, loaded or validated, or two plugins conflict."""


class ConfigError(KrError):
    """A command-line option or configuration value is invalid."""
