#!/usr/bin/env bash
# Installs podman (Debian bookworm packages) and configures it the way CI machines
# need it: root, the runc runtime, cgroupfs as cgroup manager (no systemd), no
# default ulimits, overlay storage. Idempotent; run as root.
#   containers/setup_podman.sh
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup_podman.sh: run as root (CI machines are root)" >&2
    exit 1
fi

need=()
for cmd in podman runc debootstrap; do
    command -v "$cmd" > /dev/null || need+=("$cmd")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # runc as runtime; netavark/aardvark-dns for networks (the e2e uses host
    # networking); fuse-overlayfs as fallback storage where kernel overlay is missing;
    # debootstrap + keyring to build a local base image (containers/base_image.sh).
    apt-get install -y -qq --no-install-recommends \
        podman runc conmon netavark aardvark-dns slirp4netns fuse-overlayfs \
        uidmap iptables iproute2 catatonit debootstrap debian-archive-keyring ca-certificates > /dev/null
fi

mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<'CONF'
# Written by containers/setup_podman.sh
[containers]
default_ulimits = []
# No systemd, no journald here.
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[network]
# netavark, not CNI (whose plugins Debian does not install with podman).
network_backend = "netavark"
CONF

# Kernel overlay where the kernel has it, else fuse-overlayfs.
if grep -qw overlay /proc/filesystems; then
    mount_program=""
else
    mount_program='mount_program = "/usr/bin/fuse-overlayfs"'
fi
cat > /etc/containers/storage.conf <<CONF
# Written by containers/setup_podman.sh
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options.overlay]
${mount_program}
CONF

# No registry is reachable from CI machines: images are local or built here.
if [ ! -s /etc/containers/registries.conf ]; then
    printf 'unqualified-search-registries = ["docker.io"]\n' > /etc/containers/registries.conf
fi

podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Store.GraphDriverName}}'
