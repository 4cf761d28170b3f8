"""Tests of how v2d is shipped: sdist/wheel, systemd units, the Debian package, manifests."""
