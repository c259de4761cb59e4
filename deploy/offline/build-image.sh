#!/usr/bin/env bash
# Build deploy/Dockerfile on a machine that reaches Debian's archive and PyPI but no container registry
# (the CI machine): no base image is pulled and the build itself reaches no index.
#
#   deploy/offline/build-image.sh [TAG]                          # default tag mtserve:cpu
#   TORCH_VERSION=2.14.1 deploy/offline/build-image.sh mtserve:cuda  # the CUDA variant, same Dockerfile
#
# 1. A Debian 12 base with Python 3.11 (the Python of the local torch 2.13.0 wheel), made by debootstrap
#    and `docker import`ed as $BASE_IMAGE. Its rootfs tarball is cached.
# 2. A wheelhouse: torch==$TORCH_VERSION (2.13.0: the local CPU wheel; 2.14.1: the local CUDA build, whose
#    nvidia-* wheels come with it) and every dependency of the project and its build
#    (setuptools), from `pip download` with this machine's pip settings; cached, refreshed each run.
# 3. The wheelhouse served as a PEP 503 index on 127.0.0.1 and the project's own Dockerfile built with
#    BuildKit and `--network host` (the build's RUN steps reach that index), PYTHON_IMAGE, TORCH_INDEX_URL
#    and PIP_INDEX_URL passed as build arguments.
#
# Environment: MTSERVE_BUILD_CACHE (default .ci/cache/image), DOCKER (a docker CLI that speaks BuildKit:
# by default `docker` if it has buildx, else Debian's /usr/bin/docker, whose builder is BuildKit built in).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-mtserve:cpu}
cache=${MTSERVE_BUILD_CACHE:-$repo/.ci/cache/image}
base_image=${BASE_IMAGE:-mtserve-base:bookworm-python3.11}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
torch_version=${TORCH_VERSION:-2.13.0}
mkdir -p "$cache"

if [ -z "${DOCKER:-}" ]; then
    if docker buildx version >/dev/null 2>&1 || [ ! -x /usr/bin/docker ]; then DOCKER=docker; else DOCKER=/usr/bin/docker; fi
fi
export DOCKER_BUILDKIT=1

# -- 1. the base image ---------------------------------------------------------------------------------
if ! "$DOCKER" image inspect "$base_image" >/dev/null 2>&1; then
    rootfs_tar="$cache/$suite-python3.11-rootfs.tar"
    if [ ! -s "$rootfs_tar" ]; then
        rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
        echo "debootstrap $suite into $rootfs (a few minutes)" >&2
        # minbase has groupadd/useradd (passwd); python3-venv for the Dockerfile's `python -m venv`,
        # python-is-python3 for its `python`, ca-certificates for an https index.
        debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
            "$suite" "$rootfs" "$mirror" >&2
        # What a container needs no more: the apt lists and the package cache (~60 MB).
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
        tar -C "$rootfs" -cf "$rootfs_tar.partial" . && mv "$rootfs_tar.partial" "$rootfs_tar"
        rm -rf "$rootfs"
    fi
    "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$rootfs_tar" "$base_image" >&2
fi

# -- 2. the wheelhouse ---------------------------------------------------------------------------------
wheels="$cache/wheels-torch-$torch_version"
mkdir -p "$wheels"
# torch pinned first: an unpinned one would resolve to a CUDA build of several GB.
python3 -m pip download -q --disable-pip-version-check -d "$wheels" "torch==$torch_version" "$repo" "setuptools>=69" >&2
index="$cache/index"
rm -rf "$index" && mkdir -p "$index/simple"
python3 - "$wheels" "$index" <<'PY'
"""A PEP 503 simple index of the wheelhouse: /simple/<normalised name>/ links to /files/<wheel>."""
import html, os, re, sys
from pathlib import Path

wheels, index = Path(sys.argv[1]), Path(sys.argv[2])
os.symlink(wheels, index / "files")
projects: dict[str, list[str]] = {}
for wheel in sorted(wheels.glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel.name)
for name, files in projects.items():
    (index / "simple" / name).mkdir()
    links = "".join(f'<a href="../../files/{html.escape(f)}">{html.escape(f)}</a>\n' for f in files)
    (index / "simple" / name / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$index" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/simple/', timeout=1)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

# -- 3. the project's Dockerfile -----------------------------------------------------------------------
"$DOCKER" build --network host -f "$repo/deploy/Dockerfile" -t "$tag" \
    --build-arg PYTHON_IMAGE="$base_image" \
    --build-arg TORCH_VERSION="$torch_version" \
    --build-arg TORCH_INDEX_URL="http://127.0.0.1:$port/simple" \
    --build-arg PIP_INDEX_URL="http://127.0.0.1:$port/simple" \
    "$repo" >&2
echo "$tag"
