"""kr core: the plugin host, Kubernetes watch, cache, runner and desired-state model.

Invariant: nothing in ``kr_core`` imports ``kr_plugins``; backends reach the core only
through the hook specifications in :mod:`kr_core.hookspecs`.
"""

__version__ = "0.1.0"
