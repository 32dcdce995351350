//! The mesh as a Graphviz DOT graph, byte for byte as `kgctl graph` prints it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use crate::{Granularity, Topology};

/// Attributes of an edge, written sorted by key as gographviz does.
const TUNNEL: &[(&str, &str)] = &[("dir", "both")];
const PEER: &[(&str, &str)] = &[("dir", "both"), ("style", "dashed")];
const PLAIN: &[(&str, &str)] = &[("arrowhead", "none"), ("arrowtail", "none"), ("dir", "both"), ("style", "dotted")];

struct Edge {
    src: String,
    dst: String,
    attrs: &'static [(&'static str, &'static str)],
}

#[derive(Default)]
struct Subgraph {
    label: String,
    /// Node ID -> sorted attributes.
    nodes: BTreeMap<String, Vec<(&'static str, String)>>,
}

fn quote(text: &str) -> String {
    format!("\"{text}\"")
}

impl Topology {
    /// The DOT graph of the mesh (Kilo's `Topology.Dot`, with the `cross` layout of Cozystack's
    /// patch): a cluster per location, WireGuard tunnels as solid edges, peers dashed, and in
    /// `cross` granularity the plain same-location links dotted.
    pub fn to_dot(&self) -> String {
        let mut subgraphs: BTreeMap<String, Subgraph> = BTreeMap::new();
        let mut edges: Vec<Edge> = Vec::new();
        let cross = self.granularity == Granularity::Cross;
        let mut leaders = Vec::with_capacity(self.segments.len());
        let mut groups = Vec::with_capacity(self.segments.len());

        for segment in &self.segments {
            let location = segment.group.clone().unwrap_or_else(|| segment.name.clone());
            let subgraph = subgraphs.entry(quote(&format!("cluster_location_{location}"))).or_default();
            subgraph.label = location.clone();
            for (index, member) in segment.members.iter().enumerate() {
                let mut label = vec![location.clone(), member.name.clone(), member.pod_subnet.to_string()];
                if let Some(private_ip) = member.private_ip {
                    label.push(private_ip.to_string());
                }
                let mut attrs = Vec::new();
                if index == segment.leader {
                    label.push(segment.wireguard_ip.to_string());
                    if let Some(endpoint) = &segment.endpoint {
                        label.push(endpoint.to_string());
                    }
                    attrs.push(("rank", "1".to_owned()));
                }
                attrs.push(("label", quote(&label.join("\\n"))));
                attrs.push(("shape", "ellipse".to_owned()));
                attrs.sort();
                subgraph.nodes.insert(quote(&member.name), attrs);
            }
            if !cross {
                let leader = quote(&segment.members[segment.leader].name);
                for member in segment.members.iter().map(|m| quote(&m.name)).collect::<BTreeSet<_>>() {
                    if member != leader {
                        edges.push(Edge { src: leader.clone(), dst: member, attrs: TUNNEL });
                    }
                }
            }
            leaders.push(quote(&segment.members[segment.leader].name));
            groups.push(segment.group.clone());
        }

        // In cross granularity the nodes of a location talk over the private network, not WireGuard.
        let mut seen_groups = HashSet::new();
        for group in groups.iter().flatten() {
            if !seen_groups.insert(group) {
                continue;
            }
            let children: Vec<String> =
                subgraphs[&quote(&format!("cluster_location_{group}"))].nodes.keys().cloned().collect();
            for (i, src) in children.iter().enumerate() {
                for dst in &children[i + 1..] {
                    edges.push(Edge { src: src.clone(), dst: dst.clone(), attrs: PLAIN });
                }
            }
        }
        for i in 0..leaders.len() {
            for j in i + 1..leaders.len() {
                if groups[i].is_some() && groups[i] == groups[j] {
                    continue;
                }
                if edges.iter().any(|e| e.src == leaders[i] && e.dst == leaders[j]) {
                    continue;
                }
                edges.push(Edge { src: leaders[i].clone(), dst: leaders[j].clone(), attrs: TUNNEL });
            }
        }

        let mut peers = Subgraph { label: "peers".to_owned(), ..Subgraph::default() };
        for peer in &self.peers {
            let endpoint = peer.endpoint.as_ref().map(ToString::to_string).unwrap_or_default();
            // Kilo ends a peer label with a raw newline; kept so the output is identical.
            let label = quote(&format!("{}\\n{endpoint}\n", peer.name));
            peers.nodes.insert(quote(&peer.name), vec![("label", label), ("shape", "ellipse".to_owned())]);
        }
        for leader in &leaders {
            for peer in peers.nodes.keys() {
                edges.push(Edge { src: leader.clone(), dst: peer.clone(), attrs: PEER });
            }
        }
        subgraphs.insert(quote("cluster_peers"), peers);

        let mut out = String::new();
        out.push_str("digraph kilo {\n");
        let _ = writeln!(out, "\tlabel={};", quote(&self.wireguard_cidr.trunc().to_string()));
        out.push_str("\tlabelloc=t;\n\toutputorder=nodesfirst;\n\toverlap=false;\n");
        for edge in &edges {
            let attrs: Vec<String> = edge.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "\t{}->{}[ {} ];", edge.src, edge.dst, attrs.join(", "));
        }
        for (name, subgraph) in &subgraphs {
            let _ = writeln!(out, "\tsubgraph {name} {{");
            let _ = writeln!(out, "\tlabel={};", quote(&subgraph.label));
            out.push_str("\tstyle=\"dashed,rounded\";\n");
            for (id, attrs) in &subgraph.nodes {
                let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "\t{id} [ {} ];", attrs.join(", "));
            }
            out.push_str("\n}\n;\n");
        }
        out.push_str("\n}\n");
        out
    }
}
