#!/usr/bin/env bash
# Builds the mesh-agent image from the repository's Dockerfile without a container registry, as
# root with podman (scripts/test-deps.sh installs it): the Debian base image is made from Debian's
# archive with mmdebstrap and imported under the name the Dockerfile pulls, the binary comes from
# a release build on this machine (an imported one-file image passed as BINARY_IMAGE), and the
# runtime stage is built with --pull=never. With a registry, `podman build .` builds the same
# runtime stage from the Rust builder stage instead.
#
#   scripts/image.sh [IMAGE]        (default: localhost/mesh-agent:dev; prints its size)
#   scripts/image.sh --base-only    (only seeds the Debian base image)
#
# runc, not crun: crun needs CAP_SYS_RESOURCE and cgroups v2 or v1, which CI sandboxes lack.
set -euo pipefail
cd "$(dirname "$0")/.."

image=localhost/mesh-agent:dev
base_only=false
case "${1:-}" in
--base-only) base_only=true ;;
"") ;;
*) image=$1 ;;
esac

base=docker.io/library/debian:bookworm-slim
binary_image=localhost/mesh-agent-binary:dev
work=target/image
podman=(podman --runtime runc)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
mkdir -p "$work"

if ! "${podman[@]}" image exists "$base"; then
    echo "seeding $base from Debian's archive (mmdebstrap)" >&2
    # What Docker's debian:bookworm-slim leaves out: documentation, manuals, locales, apt lists.
    mmdebstrap --quiet --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        bookworm "$work/debian-bookworm.tar" \
        'deb http://deb.debian.org/debian bookworm main' \
        'deb http://deb.debian.org/debian bookworm-updates main' \
        'deb http://deb.debian.org/debian-security bookworm-security main'
    "${podman[@]}" import --quiet "$work/debian-bookworm.tar" "$base" >/dev/null
    rm -f "$work/debian-bookworm.tar"
fi
if $base_only; then
    exit 0
fi

cargo build --release --locked -q -p mesh-agent
# As the Dockerfile's builder stage leaves it: stripped, at /mesh-agent.
install -D -s -m 0755 target/release/mesh-agent "$work/binary/mesh-agent"
tar -C "$work/binary" -cf "$work/binary.tar" mesh-agent
"${podman[@]}" import --quiet "$work/binary.tar" "$binary_image" >/dev/null
rm -rf "$work/binary.tar" "$work/binary"

# --network=host: the runtime stage installs its packages from Debian's archive.
"${podman[@]}" build --quiet --pull=never --network=host "${limits[@]}" \
    --build-arg BINARY_IMAGE="$binary_image" --tag "$image" . >/dev/null
"${podman[@]}" image rm --force "$binary_image" >/dev/null
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
echo "built $image: $((size / 1000000)) MB" >&2
