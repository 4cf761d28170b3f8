#!/usr/bin/env bash
# Set up what the packaging tests (tests/packaging/) need on a Debian 12 machine:
# systemd-analyze (systemd), the Debian package tool chain (dpkg-dev, debhelper,
# dh-virtualenv, build-essential, python3-dev, python3-venv) and lintian. Idempotent:
# installs only what is missing. The Docker engine and debootstrap, for the test that
# boots systemd in a container, come from .ci/setup-docker.sh.
set -euo pipefail

packages=(systemd dpkg-dev debhelper dh-virtualenv build-essential python3-dev python3-venv lintian)
need=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    need+=("$package")
  fi
done

if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-packaging: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

echo "setup-packaging: $(systemd-analyze --version | head -n 1)"
echo "setup-packaging: dh-virtualenv $(dpkg-query -W -f='${Version}' dh-virtualenv), lintian $(dpkg-query -W -f='${Version}' lintian)"
