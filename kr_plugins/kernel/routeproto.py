"""The route protocol number that marks every route kr installs.

Invariant: every kr backend that installs a route sets ``rtm_protocol`` to ``KR_ROUTE_PROTOCOL``, and kr
only ever replaces or deletes routes that carry it; a route with any other protocol is somebody else's.

107 (0x6b, ASCII ``k``) is none of the numbers named by iproute2's ``rt_protos`` or the kernel's
``rtnetlink.h`` (0-4, 8-18, 42, 84, 99, 186-192), so no common daemon (zebra/FRR 11 and 186-192, BIRD 12,
dhcp 16, keepalived 18, babel 42) writes or deletes it. See them with ``ip route show proto 107``.
"""

from __future__ import annotations

from typing import Final

KR_ROUTE_PROTOCOL: Final = 107
