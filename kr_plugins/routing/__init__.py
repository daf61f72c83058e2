"""Pod routing between nodes: the ``routing.static`` backend and the parts a ``routing.bgp`` backend reuses.

``plan`` decides (purely) how each peer's pod CIDRs are reached; ``overlay`` is the VXLAN overlay's design
and options, ``vxlan`` programs its device and peers; ``routes`` reconciles kr's routes by protocol
number; ``egress`` masquerades pod traffic leaving the cluster; ``static`` is the backend tying them
together. See docs/routing.md.
"""
