#!/usr/bin/env bash
# Prints the base image to build on: the Dockerfile's default (a registry image)
# where it can be pulled, else a minimal Debian bookworm with python3 and
# python3-venv, built here from the apt mirror this machine is configured with.
#   make image BASE_IMAGE="$(containers/base_image.sh)"
#   containers/base_image.sh --local [TAG]     # always the local one
# The local build is skipped when TAG exists. Needs root, debootstrap and podman
# (containers/setup_podman.sh installs both). Messages go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${CONTAINER_ENGINE:-podman}"
local_only=0
if [ "${1:-}" = "--local" ]; then
    local_only=1
    shift
fi
tag="${1:-localhost/raee-base:bookworm}"

if [ "$local_only" = 0 ]; then
    registry="$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)"
    if timeout 300 "$engine" pull -q "$registry" > /dev/null 2>&1; then
        echo "$registry"
        exit 0
    fi
    echo "base_image.sh: cannot pull $registry; building $tag from Debian packages" >&2
fi

if "$engine" image exists "$tag" 2> /dev/null; then
    echo "base_image.sh: $tag exists" >&2
    echo "$tag"
    exit 0
fi

# The first Debian mirror of the apt sources (deb822 "URIs:" or one-line "deb URL bookworm").
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror="$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2> /dev/null || true; } \
        | awk '/^URIs:.*\/debian\/?$/ {print $2; exit} /^deb .*\/debian\/? bookworm/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d /var/tmp/raee-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "base_image.sh: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
# Lean: no apt lists, no docs, no man pages, no locales.
rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/*.bin \
    "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/locale/*
tar -C "$work/rootfs" --numeric-owner -c . \
    | "$engine" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" > /dev/null
echo "base_image.sh: built $tag" >&2
echo "$tag"
