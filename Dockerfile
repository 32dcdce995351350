# The mesh-agent image: the agent as ENTRYPOINT (a DaemonSet passes only `args:`, as with Kilo's
# image), plus what it runs on a node: iptables with both back ends and a wrapper that picks the
# one the node uses (iptables-save/-restore), Graphviz for /graph, wireguard-tools for debugging,
# wireguard-go for nodes without the kernel module, and the CNI plugins of Kilo's CNI mode.
#
#   docker build -t mesh-agent .          (or: podman build -t mesh-agent .)
#
# The runtime stage takes the binary from the stage named by BINARY_IMAGE: by default the Rust
# builder below; scripts/image.sh builds without a registry by passing a local image that holds a
# binary built on the host, so both paths share the runtime stage unchanged.
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BINARY_IMAGE=builder

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The cache mounts keep crates and build output between builds; the binary leaves them by
# `install`, stripped.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mesh-agent \
    && install -D -s -m 0755 target/release/mesh-agent /mesh-agent

FROM ${BINARY_IMAGE} AS binary

FROM ${DEBIAN_IMAGE} AS runtime
# iptables brings both xtables-nft-multi and xtables-legacy-multi; wireguard-go is the sidecar of
# the userspace setups. The CNI plugins the agent's conflist names (Kilo's CNI mode) are copied to
# /opt/cni/bin, where the install-cni init container takes them from; the rest of the package is
# not kept. Nothing is recommended in.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates graphviz iproute2 iptables wireguard-go \
        wireguard-tools \
    && cd /tmp && apt-get download containernetworking-plugins \
    && dpkg-deb --extract containernetworking-plugins_*.deb plugins \
    && install -D -m 0755 -t /opt/cni/bin plugins/usr/lib/cni/bridge plugins/usr/lib/cni/host-local \
        plugins/usr/lib/cni/loopback plugins/usr/lib/cni/portmap \
    && rm -rf /tmp/* /var/lib/apt/lists/* /var/cache/apt/*
# Every iptables command goes through the wrapper until its first run has chosen the back end
# the node's kubelet and kube-proxy use; the wrapper then points the alternatives at it.
COPY deploy/image/iptables-wrapper /usr/sbin/iptables-wrapper
RUN for command in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
        ln -sf iptables-wrapper "/usr/sbin/${command}"; \
    done
COPY --from=binary /mesh-agent /usr/local/bin/mesh-agent
# The agent runs as root: it creates the WireGuard interface, routes, rules and iptables chains in
# the host's network namespace, writes /proc/sys, /var/lib/kilo and the xtables lock, and runs
# iptables, which all need root with NET_ADMIN (Kubernetes grants added capabilities only to root
# processes; the DaemonSet runs it privileged, as Kilo's). The offline tools need no privileges:
# `--user 65534` works for `plan`, `showconf`, `graph` and `crd`.
USER 0
EXPOSE 1107
ENTRYPOINT ["/usr/local/bin/mesh-agent"]
