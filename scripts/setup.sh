#!/usr/bin/env bash
# Set up everything kr needs on a Debian machine, as root: system packages, then a virtualenv in .venv
# with kr installed in editable mode (with its test extras). Safe to run again; it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: the datapath tools the backends drive, the BGP daemon the tests peer with, and
# Python's venv module (a separate package on Debian).
packages=(iproute2 iptables ipset conntrack bird2 procps python3 python3-venv python3-pip ca-certificates user-mode-linux)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# bird2's package starts a system-wide daemon; kr's tests run their own BIRD inside namespaces.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet bird 2>/dev/null; then
  systemctl disable --now bird >/dev/null 2>&1 || true
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: kr needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,netlink]'
echo "setup: done ($(.venv/bin/kr version), $(.venv/bin/python --version))"
