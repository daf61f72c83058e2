"""Unit tests of the overlay's derivations and settings."""

from __future__ import annotations

import pytest

from kr_plugins.routing.overlay import (
    OverlaySettings,
    OverlayType,
    overlay_device,
    overlay_peer,
    overlay_settings,
    vtep_address,
    vtep_mac,
)


def test_vtep_mac_is_derived_from_the_node_ip_locally_administered_and_unique() -> None:
    assert vtep_mac("192.168.50.11") == "02:6b:c0:a8:32:0b"
    assert vtep_mac("10.0.0.1") == "02:6b:0a:00:00:01"
    first = int(vtep_mac("172.16.0.1").split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast
    assert len({vtep_mac(f"10.0.{i // 256}.{i % 256}") for i in range(1024)}) == 1024


def test_vtep_address_is_the_pod_cidr_network_address() -> None:
    assert vtep_address("10.244.3.0/24") == "10.244.3.0"
    assert overlay_peer("192.168.60.13", "10.244.3.0/24").vtep_ip == "10.244.3.0"


def test_device_mtu_leaves_room_for_the_encapsulation() -> None:
    device = overlay_device(OverlaySettings(), "192.168.50.11", "eth0", 9000, "10.244.1.0/24")
    assert device.mtu == 8950 and device.addresses == ("10.244.1.0/32",)
    moved = overlay_device(OverlaySettings(port=8472), "192.168.50.11", "eth0", 1500, None)
    assert not device.same_tunnel(moved)
    assert device.same_tunnel(overlay_device(OverlaySettings(), "192.168.50.11", "eth0", 1500, None))


def test_overlay_mode_decides_per_peer() -> None:
    assert OverlaySettings().uses_overlay(same_subnet=False)
    assert not OverlaySettings().uses_overlay(same_subnet=True)
    assert OverlaySettings(type=OverlayType.FULL).uses_overlay(same_subnet=True)
    assert not OverlaySettings(enabled=False).uses_overlay(same_subnet=False)


def test_settings_from_options_default_and_validate() -> None:
    assert overlay_settings({}) == OverlaySettings()
    assert overlay_settings({"enable_overlay": False, "overlay_type": "full", "overlay_vxlan_vni": 7,
                             "overlay_encap_port": 8472}) == OverlaySettings(False, OverlayType.FULL, 7, 8472)
    with pytest.raises(ValueError):
        OverlaySettings(vni=1 << 24)
    with pytest.raises(ValueError):
        OverlaySettings(port=0)
