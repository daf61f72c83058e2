"""Stable short names for kernel objects (iptables chains, ipsets) that kr derives from what defines them.

Invariant: ``digest`` depends only on its arguments (as JSON, keys sorted), never on process state, so
every agent on every node names the same thing the same way, and a restarted agent finds its objects.
"""

from __future__ import annotations

import hashlib
import json

from kr_core.model import to_jsonable


def digest(*parts: object) -> str:
    """16 upper-case hex digits identifying ``parts`` (64 bits: collisions are not a practical concern)."""
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16].upper()
