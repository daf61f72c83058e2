"""Service proxy backends (slot ``proxy``): ``proxy.iptables``. Shared: endpoint choice, health checks."""
