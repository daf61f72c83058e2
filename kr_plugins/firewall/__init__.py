"""The NetworkPolicy firewall (kube-router's ``--run-firewall``).

``compile`` turns a desired state into filter-table chains and ipsets (pure); ``iptables`` is the
``firewall.iptables`` backend that applies them with one ``ipset restore`` and one
``iptables-restore --noflush`` per sync. See docs/firewall.md.
"""
