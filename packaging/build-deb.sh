#!/bin/sh
# Build the v2d Debian package from this source tree: build-deb.sh [OUTDIR]
#
# Copies the tree (without VCS and build leftovers) to a scratch folder, puts
# packaging/debian/ in place as debian/, runs `dpkg-buildpackage -us -uc -b` and
# leaves v2d_*.deb (and the .buildinfo/.changes) in OUTDIR (default: ./dist).
# Needs: dpkg-dev, debhelper, dh-virtualenv, python3-venv, python3-dev, and PyPI.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
outdir=${1:-"$src/dist"}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$src/v2d/_version.py")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tree="$scratch/v2d-$version"
mkdir "$tree"
tar -C "$src" \
    --exclude=./.git --exclude=./.tox --exclude=./dist --exclude=./build --exclude="*.egg-info" \
    --exclude=__pycache__ --exclude='*.pyc' --exclude=dropin.cache --exclude=.venv \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=_trial_temp \
    --exclude=./debian --exclude=twistd.pid --exclude=twistd.log \
    -cf - . | tar -C "$tree" -xf -
cp -r "$src/packaging/debian" "$tree/debian"

(cd "$tree" && dpkg-buildpackage -us -uc -b)
for f in "$scratch"/v2d_*; do
    cp "$f" "$outdir/"
done
ls "$outdir"/v2d_"$version"-*.deb
