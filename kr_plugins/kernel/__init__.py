"""Kernel helpers shared by kr's backends (routing today; proxy and firewall next).

Each module does one job and owns nothing by itself: ``command`` runs the kernel's tools, ``iptables``
picks the iptables flavour and applies kr-owned chains atomically, ``ipset`` swaps whole sets into
place, ``sysctl`` sets one knob, and ``routeproto`` holds the route protocol number that marks kr's
routes. Importing any of them touches nothing.
"""
