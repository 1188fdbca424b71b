#!/usr/bin/env bash
# Downloads every wheel the image installs into wheelhouse/ (the only folder besides
# the sources that .dockerignore admits), so that the image build needs no index:
# torch as the CPU build, the project's dependencies at the versions of
# constraints.txt, setuptools to build the project. Run on the host, where pip
# reaches its configured index (and, for the CPU torch wheel, TORCH_INDEX_URL or
# a find-links folder with it).
#   containers/wheelhouse.sh            # PYTHON=.venv/bin/python by default
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
torch="torch==${TORCH_VERSION:-2.13.0}"

mapfile -t deps < <("$python" -c '
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(dep)')
extra=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    extra=(--extra-index-url "$TORCH_INDEX_URL")
fi
mkdir -p wheelhouse
"$python" -m pip download -q --only-binary=:all: --dest wheelhouse --find-links wheelhouse \
    -c constraints.txt "${extra[@]}" "$torch" "setuptools>=77" "${deps[@]}"
# A CUDA torch build would pull gigabytes of nvidia wheels the CPU image never uses.
if ls wheelhouse/nvidia_* > /dev/null 2>&1; then
    echo "wheelhouse.sh: a CUDA torch build came in (nvidia_* wheels); set TORCH_INDEX_URL to a CPU wheel index" >&2
    exit 1
fi
du -sh wheelhouse | sed 's/^/wheelhouse: /'
