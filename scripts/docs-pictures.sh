#!/usr/bin/env bash
# Draws the pictures of docs/topology.md with our own `mesh-agent graph` (the DOT that kgctl
# graph prints) and Graphviz, as the agent's /graph does (layout circo), from the example cluster
# of the README. Run it after a change to the graph rendering or the example; the DOT files are
# checked by `cargo test -p mesh-agent --test cli` (docs_pictures_are_current).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dot >/dev/null || { echo "Graphviz's dot is missing: scripts/test-deps.sh installs it" >&2; exit 1; }
cargo build -q -p mesh-agent
for granularity in location full cross; do
    target/debug/mesh-agent graph --nodes examples/cozystack-cluster.yaml --now 1767225600 \
        --mesh-granularity "$granularity" >"docs/pictures/$granularity.dot"
    dot -Kcirco -Tsvg "docs/pictures/$granularity.dot" >"docs/pictures/$granularity.svg"
done
