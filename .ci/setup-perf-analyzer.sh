#!/usr/bin/env bash
# Set up Triton's perf_analyzer (PyPI perf-analyzer 2.60.0) in a private directory.
#
# Its wheel is built for glibc >= 2.38 and Debian 12 has 2.36, so the C runtime it needs
# (libc6, libstdc++6, libgcc-s1, libssl3t64, zlib1g) is taken from Debian 13 ("trixie")
# with apt, using an apt configuration of its own, and unpacked with dpkg-deb next to the
# binary. Nothing is installed system-wide: the system's apt sources, package database
# and libraries are left as they are. The result is a launcher script,
#
#     $PERF_ANALYZER_HOME/perf_analyzer
#
# that starts the binary through the private ld-linux-x86-64.so.2 --library-path ....
# tests/support/perf_analyzer.py finds it there (and the benchmarks use it too).
#
# Idempotent: a complete set-up is left alone. Environment:
#   PERF_ANALYZER_HOME     where to put it (default: ${XDG_CACHE_HOME:-$HOME/.cache}/v2d/perf-analyzer)
#   PERF_ANALYZER_VERSION  the PyPI release (default 2.60.0)
#   DEBIAN_MIRROR          the Debian archive (default http://deb.debian.org/debian)
set -euo pipefail

version="${PERF_ANALYZER_VERSION:-2.60.0}"
home="${PERF_ANALYZER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/v2d/perf-analyzer}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
launcher="$home/perf_analyzer"
marker="$home/.complete-$version"

say() { echo "setup-perf-analyzer: $*"; }

if [ "$(uname -m)" != "x86_64" ]; then
  say "only x86_64 is supported (this is $(uname -m)); nothing done"
  exit 0
fi

if [ -f "$marker" ] && [ -x "$launcher" ] && "$launcher" --version >/dev/null 2>&1; then
  say "already set up in $home"
  exit 0
fi

rm -rf "$home"
mkdir -p "$home"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Tools this needs from Debian itself (present on most machines; installed if not).
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v apt-get >/dev/null || { say "apt-get is required"; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 1. The wheel (platform tag manylinux_2_38, so name the platform explicitly).
say "downloading perf-analyzer $version from PyPI"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_38_x86_64 --python-version 3.11 -d "$work/wheel" "perf-analyzer==$version"
"$work/venv/bin/python" -m zipfile -e "$work"/wheel/perf_analyzer-*.whl "$work/unpacked"
mkdir -p "$home/bin"
cp "$work/unpacked/perf_analyzer/bin/perf_analyzer" "$home/bin/perf_analyzer"
chmod +x "$home/bin/perf_analyzer"

# 2. Debian 13's C runtime, through a private apt configuration.
say "fetching Debian 13 runtime libraries"
apt_dir="$work/apt"
mkdir -p "$apt_dir/etc/preferences.d" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$work/debs"
echo "deb $mirror trixie main" >"$apt_dir/etc/sources.list"
: >"$apt_dir/status"
apt_opts=(
  -o "Dir::Etc::sourcelist=$apt_dir/etc/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::Etc::preferencesparts=$apt_dir/etc/preferences.d"
  -o "Dir::State=$apt_dir/state"
  -o "Dir::State::status=$apt_dir/status"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Architecture=amd64"
  -o "APT::Architectures=amd64"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
  -o "Debug::NoLocking=1"
)
apt-get "${apt_opts[@]}" update -qq
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g)
mkdir -p "$home/root"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$home/root"
done
ls "$work"/debs >"$home/debs.txt"

# 3. The launcher.
cat >"$launcher" <<'EOF'
#!/bin/sh
# Runs perf_analyzer with its private Debian 13 C runtime (see .ci/setup-perf-analyzer.sh).
here="$(cd "$(dirname "$0")" && pwd)"
lib="$here/root/usr/lib/x86_64-linux-gnu:$here/root/lib/x86_64-linux-gnu"
exec "$here/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$lib" "$here/bin/perf_analyzer" "$@"
EOF
chmod +x "$launcher"

if ! "$launcher" --version >/dev/null 2>&1; then
  say "the launcher does not run:"
  "$launcher" --version 2>&1 | tail -5 || true
  exit 1
fi
echo "$version" >"$marker"
say "ready: $launcher"
