"""Fixtures of the routing tests: ``lab``, a fresh network-namespace lab per test (see routing_lab.py).

Invariant: the lab is torn down in ``finally``, also when building it or the test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from routing_lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    built = Lab(tmp_path)
    try:
        built.build()
        yield built
    finally:
        built.teardown()
