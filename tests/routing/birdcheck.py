"""BIRD itself as the judge of a rendered configuration: ``bird -p`` parses it without starting anything.

``needs_bird`` skips a test where BIRD 2 is not installed (scripts/setup.sh installs it);
``bird_refuses(text, directory)`` returns BIRD's complaint, or None when it accepts the text.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_bird = pytest.mark.skipif(shutil.which("bird") is None,
                                reason="BIRD 2 is not installed (scripts/setup.sh installs it)")


def bird_refuses(text: str, directory: Path) -> str | None:
    conf = directory / "bird.conf"
    conf.write_text(text)
    done = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False)
    return None if done.returncode == 0 else done.stderr or f"bird -p exited {done.returncode}"
