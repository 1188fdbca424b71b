#!/usr/bin/env bash
# Builds a minimal Debian bookworm base image with python3 and python3-venv from
# the apt mirror this machine is configured with, for places where no registry
# base image (python:3.11-slim-bookworm) can be pulled. Pass the result to the
# image build: make image BASE_IMAGE=localhost/raee-base:bookworm
#   scripts/containers/base_image.sh [TAG]
# Skips the build when TAG already exists. Needs root, debootstrap and podman
# (scripts/containers/setup_podman.sh installs both).
set -euo pipefail
tag="${1:-localhost/raee-base:bookworm}"
engine="${CONTAINER_ENGINE:-podman}"

if "$engine" image exists "$tag" 2> /dev/null; then
    echo "base image $tag exists"
    exit 0
fi

# The first Debian mirror of the apt sources (deb822 "URIs:" or one-line "deb URL bookworm").
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror="$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2> /dev/null || true; } \
        | awk '/^URIs:.*\/debian\/?$/ {print $2; exit} /^deb .*\/debian\/? bookworm/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d /var/tmp/raee-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || { tail -30 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Lean: no apt lists, no docs, no man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" --numeric-owner -c . \
    | "$engine" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" > /dev/null
echo "built base image $tag"
