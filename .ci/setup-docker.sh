#!/usr/bin/env bash
# Set up what the Docker tests need on a Debian 12 machine: Debian's Docker engine
# (docker.io: dockerd, containerd, runc) and debootstrap, which makes the tests' local
# base image (Docker Hub is not reachable). Idempotent.
#
# The engine itself is started by the tests (tests/support/docker_engine.py) with its
# data under ~/.cache/v2d-tests/docker, so the base image is made once and found by
# tag afterwards. To start it and make the base image now (and leave the engine
# running), run from the repository root:  python3 -m tests.support.docker_engine
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# GNU tar packs the base image's root file system; iptables sets up container networking.
command -v tar >/dev/null 2>&1 || need+=(tar)
command -v iptables >/dev/null 2>&1 || need+=(iptables)

if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-docker: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}" ca-certificates
fi

# Debian's package enables a system dockerd where systemd runs; the tests use it when it
# answers on /var/run/docker.sock, and start their own otherwise.
echo "setup-docker: $(dockerd --version)"
echo "setup-docker: $(debootstrap --version 2>/dev/null || echo debootstrap present)"
