//! Kilo's DOT graph (`kgctl graph`, kilo-reference.md §8.2, Appendix C) on the shared fixture,
//! byte for byte, and the `cross` layout of Cozystack's patch of `pkg/mesh/graph.go`.
//!
//! Kilo's `Topology.Dot()` returns gographviz's `Graph.String()`, which ends in `"\n}\n"`;
//! `kgctl graph` prints it with `fmt.Println`, which adds one more `"\n"`. Appendix C shows what
//! kgctl prints, so `to_dot()` (Kilo's `Dot()`) is the appendix minus its last newline.
//!
//! The DOT constants hold literal tabs (gographviz indents every statement with one tab) and, in
//! the peer labels, the raw newline Kilo's `peerLabel` writes after the endpoint.

mod common;

use std::process::Command;

use common::snapshot;
use mesh_core::{ClusterSnapshot, Granularity, Options, Topology};

/// Appendix C: what `kgctl graph` prints for the fixture with peers renamed `peer-a`/`peer-b`,
/// from host a, `location` granularity.
const APPENDIX_C: &str = r#"digraph kilo {
	label="10.4.0.0/16";
	labelloc=t;
	outputorder=nodesfirst;
	overlap=false;
	"b"->"c"[ dir=both ];
	"a"->"b"[ dir=both ];
	"a"->"d"[ dir=both ];
	"b"->"d"[ dir=both ];
	"a"->"peer-a"[ dir=both, style=dashed ];
	"a"->"peer-b"[ dir=both, style=dashed ];
	"b"->"peer-a"[ dir=both, style=dashed ];
	"b"->"peer-b"[ dir=both, style=dashed ];
	"d"->"peer-a"[ dir=both, style=dashed ];
	"d"->"peer-b"[ dir=both, style=dashed ];
	subgraph "cluster_location_location:1" {
	label="location:1";
	style="dashed,rounded";
	"a" [ label="location:1\na\n10.2.1.0/24\n192.168.0.1\n10.4.0.1\n10.1.0.1:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_location_location:2" {
	label="location:2";
	style="dashed,rounded";
	"b" [ label="location:2\nb\n10.2.2.0/24\n192.168.0.1\n10.4.0.2\n10.1.0.2:51820", rank=1, shape=ellipse ];
	"c" [ label="location:2\nc\n10.2.3.0/24\n192.168.0.2", shape=ellipse ];

}
;
	subgraph "cluster_location_node:d" {
	label="node:d";
	style="dashed,rounded";
	"d" [ label="node:d\nd\n10.2.4.0/24\n10.4.0.3\n10.1.0.4:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_peers" {
	label="peers";
	style="dashed,rounded";
	"peer-a" [ label="peer-a\n
", shape=ellipse ];
	"peer-b" [ label="peer-b\n192.168.0.1:51820
", shape=ellipse ];

}
;

}

"#;

/// The same fixture in Cozystack's `cross` granularity, from a [derived by hand from the patched
/// `Dot()` and gographviz 2.0.3's writer]: one subgraph per location holding its nodes, each node a
/// leader (`rank=1`, WireGuard IP, endpoint) labelled with its location; dotted plain links between
/// every pair of a location's nodes (sorted), added after all segments; WireGuard edges between
/// every pair of nodes in different locations; every node to every peer.
const CROSS_FROM_A: &str = r#"digraph kilo {
	label="10.4.0.0/16";
	labelloc=t;
	outputorder=nodesfirst;
	overlap=false;
	"a"->"d"[ arrowhead=none, arrowtail=none, dir=both, style=dotted ];
	"b"->"c"[ arrowhead=none, arrowtail=none, dir=both, style=dotted ];
	"a"->"b"[ dir=both ];
	"a"->"c"[ dir=both ];
	"b"->"d"[ dir=both ];
	"c"->"d"[ dir=both ];
	"a"->"peer-a"[ dir=both, style=dashed ];
	"a"->"peer-b"[ dir=both, style=dashed ];
	"b"->"peer-a"[ dir=both, style=dashed ];
	"b"->"peer-b"[ dir=both, style=dashed ];
	"c"->"peer-a"[ dir=both, style=dashed ];
	"c"->"peer-b"[ dir=both, style=dashed ];
	"d"->"peer-a"[ dir=both, style=dashed ];
	"d"->"peer-b"[ dir=both, style=dashed ];
	subgraph "cluster_location_location:1" {
	label="location:1";
	style="dashed,rounded";
	"a" [ label="location:1\na\n10.2.1.0/24\n192.168.0.1\n10.4.0.1\n10.1.0.1:51820", rank=1, shape=ellipse ];
	"d" [ label="location:1\nd\n10.2.4.0/24\n10.4.0.4\n10.1.0.4:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_location_location:2" {
	label="location:2";
	style="dashed,rounded";
	"b" [ label="location:2\nb\n10.2.2.0/24\n192.168.0.1\n10.4.0.2\n10.1.0.2:51820", rank=1, shape=ellipse ];
	"c" [ label="location:2\nc\n10.2.3.0/24\n192.168.0.2\n10.4.0.3\n10.1.0.3:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_peers" {
	label="peers";
	style="dashed,rounded";
	"peer-a" [ label="peer-a\n
", shape=ellipse ];
	"peer-b" [ label="peer-b\n192.168.0.1:51820
", shape=ellipse ];

}
;

}
"#;

/// The same fixture in `full` granularity, from a [derived by hand]: a subgraph per node, a
/// WireGuard edge between every pair of nodes.
const FULL_FROM_A: &str = r#"digraph kilo {
	label="10.4.0.0/16";
	labelloc=t;
	outputorder=nodesfirst;
	overlap=false;
	"a"->"b"[ dir=both ];
	"a"->"c"[ dir=both ];
	"a"->"d"[ dir=both ];
	"b"->"c"[ dir=both ];
	"b"->"d"[ dir=both ];
	"c"->"d"[ dir=both ];
	"a"->"peer-a"[ dir=both, style=dashed ];
	"a"->"peer-b"[ dir=both, style=dashed ];
	"b"->"peer-a"[ dir=both, style=dashed ];
	"b"->"peer-b"[ dir=both, style=dashed ];
	"c"->"peer-a"[ dir=both, style=dashed ];
	"c"->"peer-b"[ dir=both, style=dashed ];
	"d"->"peer-a"[ dir=both, style=dashed ];
	"d"->"peer-b"[ dir=both, style=dashed ];
	subgraph "cluster_location_node:a" {
	label="node:a";
	style="dashed,rounded";
	"a" [ label="node:a\na\n10.2.1.0/24\n192.168.0.1\n10.4.0.1\n10.1.0.1:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_location_node:b" {
	label="node:b";
	style="dashed,rounded";
	"b" [ label="node:b\nb\n10.2.2.0/24\n192.168.0.1\n10.4.0.2\n10.1.0.2:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_location_node:c" {
	label="node:c";
	style="dashed,rounded";
	"c" [ label="node:c\nc\n10.2.3.0/24\n192.168.0.2\n10.4.0.3\n10.1.0.3:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_location_node:d" {
	label="node:d";
	style="dashed,rounded";
	"d" [ label="node:d\nd\n10.2.4.0/24\n10.4.0.4\n10.1.0.4:51820", rank=1, shape=ellipse ];

}
;
	subgraph "cluster_peers" {
	label="peers";
	style="dashed,rounded";
	"peer-a" [ label="peer-a\n
", shape=ellipse ];
	"peer-b" [ label="peer-b\n192.168.0.1:51820
", shape=ellipse ];

}
;

}
"#;

/// The fixture of Appendix C: peers `a` and `b` renamed `peer-a` and `peer-b`, because Kilo's
/// graph gives peers and nodes one ID namespace.
fn graph_fixture() -> ClusterSnapshot {
    let mut snapshot = snapshot();
    for peer in &mut snapshot.peers {
        peer.name = format!("peer-{}", peer.name);
    }
    snapshot
}

/// The fixture with its nodes moved to other locations (nodes not listed are dropped).
fn relocated(locations: &[(&str, &str)]) -> ClusterSnapshot {
    let mut snapshot = graph_fixture();
    snapshot.nodes.retain(|node| locations.iter().any(|(name, _)| *name == node.name));
    for node in &mut snapshot.nodes {
        node.location = locations.iter().find(|(name, _)| *name == node.name).unwrap().1.to_owned();
    }
    snapshot
}

fn dot(snapshot: &ClusterSnapshot, host: &str, granularity: Granularity) -> String {
    let options = Options { granularity, ..Options::for_host(host) };
    Topology::compute(snapshot, &options).expect("topology").to_dot()
}

/// What `kgctl graph` prints: `fmt.Println(dot)`.
fn kgctl_graph(dot: &str) -> String {
    format!("{dot}\n")
}

#[test]
fn appendix_c_byte_for_byte() {
    let dot = dot(&graph_fixture(), "a", Granularity::Location);
    assert!(dot.ends_with("\n}\n"), "gographviz's String() ends in \"\\n}}\\n\"");
    assert_eq!(kgctl_graph(&dot), APPENDIX_C);
    assert_eq!(dot, APPENDIX_C.strip_suffix('\n').unwrap());
}

#[test]
fn appendix_c_peer_labels_end_with_a_raw_newline() {
    let dot = dot(&graph_fixture(), "a", Granularity::Location);
    assert!(dot.contains("\t\"peer-a\" [ label=\"peer-a\\n\n\", shape=ellipse ];\n"));
    assert!(dot.contains("\t\"peer-b\" [ label=\"peer-b\\n192.168.0.1:51820\n\", shape=ellipse ];\n"));
}

#[test]
fn location_graph_is_the_same_from_every_host() {
    // kgctl draws from the last ready node; leaders and non-leaders give the same graph (the
    // label is the masked Kilo subnet either way).
    for host in ["b", "c", "d"] {
        assert_eq!(kgctl_graph(&dot(&graph_fixture(), host, Granularity::Location)), APPENDIX_C, "from {host}");
    }
}

#[test]
fn full_granularity_graph() {
    for host in ["a", "b", "c", "d"] {
        assert_eq!(dot(&graph_fixture(), host, Granularity::Full), FULL_FROM_A, "from {host}");
    }
}

#[test]
fn cross_granularity_graph() {
    for host in ["a", "b", "c", "d"] {
        assert_eq!(dot(&graph_fixture(), host, Granularity::Cross), CROSS_FROM_A, "from {host}");
    }
}

#[test]
fn cross_granularity_graph_of_the_issue_case() {
    // Locations "x" = {a, b} and "y" = {c}: a and b are linked plainly, each has a tunnel to c.
    let dot = dot(&relocated(&[("a", "x"), ("b", "x"), ("c", "y")]), "c", Granularity::Cross);
    let edges: Vec<&str> = dot.lines().filter(|line| line.contains("->")).collect();
    assert_eq!(
        edges,
        [
            "\t\"a\"->\"b\"[ arrowhead=none, arrowtail=none, dir=both, style=dotted ];",
            "\t\"a\"->\"c\"[ dir=both ];",
            "\t\"b\"->\"c\"[ dir=both ];",
            "\t\"a\"->\"peer-a\"[ dir=both, style=dashed ];",
            "\t\"a\"->\"peer-b\"[ dir=both, style=dashed ];",
            "\t\"b\"->\"peer-a\"[ dir=both, style=dashed ];",
            "\t\"b\"->\"peer-b\"[ dir=both, style=dashed ];",
            "\t\"c\"->\"peer-a\"[ dir=both, style=dashed ];",
            "\t\"c\"->\"peer-b\"[ dir=both, style=dashed ];",
        ]
    );
    assert!(dot.contains("\tsubgraph \"cluster_location_location:x\" {\n\tlabel=\"location:x\";\n"));
    assert!(dot.contains("\tsubgraph \"cluster_location_location:y\" {\n\tlabel=\"location:y\";\n"));
    assert!(dot.contains(
        "\t\"c\" [ label=\"location:y\\nc\\n10.2.3.0/24\\n192.168.0.2\\n10.4.0.3\\n10.1.0.3:51820\", rank=1"
    ));
    check_dot(&dot).unwrap();
}

/// Every graph the tests draw, named.
fn all_graphs() -> Vec<(String, String)> {
    let mut graphs = Vec::new();
    for granularity in [Granularity::Location, Granularity::Full, Granularity::Cross] {
        for host in ["a", "b", "c", "d"] {
            graphs.push((format!("{granularity} from {host}"), dot(&graph_fixture(), host, granularity)));
        }
    }
    let issue = relocated(&[("a", "x"), ("b", "x"), ("c", "y")]);
    graphs.push(("cross, issue case".to_owned(), dot(&issue, "a", Granularity::Cross)));
    graphs.push(("appendix C".to_owned(), APPENDIX_C.to_owned()));
    graphs
}

#[test]
fn graphs_are_well_formed_dot() {
    for (name, graph) in all_graphs() {
        if let Err(error) = check_dot(&graph) {
            panic!("{name}: {error}\n{graph}");
        }
    }
    // The checker does reject broken graphs.
    assert!(check_dot("digraph kilo {\n\t\"a\"->\"b\"[ dir=both ];\n}\n").is_err(), "undeclared nodes");
    assert!(check_dot("digraph kilo {\n\tsubgraph \"x\" {\n\t\"a\" [ shape=ellipse ];\n").is_err(), "unclosed");
    assert!(check_dot("digraph kilo {\n\t\"a\" [ label=\"x ];\n}\n").is_err(), "unclosed quote");
}

/// Renders every graph with Graphviz. Fails, never skips, when `dot` is missing: `.ci/run`
/// installs it (`apt-get install -y graphviz`).
#[test]
fn graphviz_renders_the_graphs() {
    use std::io::Write as _;
    for (name, graph) in all_graphs() {
        let mut child = Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("Graphviz `dot` must be installed for this test (apt-get install -y graphviz)");
        child.stdin.take().unwrap().write_all(graph.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: dot -Tsvg failed: {stderr}");
        assert!(stderr.trim().is_empty(), "{name}: dot -Tsvg warned: {stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("<svg"), "{name}: no SVG");
    }
}

/// A token of the DOT language, as far as gographviz writes it.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Id(String),
    Quoted(String),
    Punct(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated string starting at byte {at}")),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => {
                            value.push('\\');
                            value.push(chars.next().ok_or("dangling backslash")?.1);
                        }
                        Some((_, c)) => value.push(c),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            '-' if chars.peek().map(|&(_, c)| c) == Some('>') => {
                chars.next();
                tokens.push(Token::Punct("->"));
            }
            '{' | '}' | '[' | ']' | ';' | ',' | '=' => {
                let punct = ["{", "}", "[", "]", ";", ",", "="].into_iter().find(|p| p.starts_with(c)).unwrap();
                tokens.push(Token::Punct(punct));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                let mut value = String::from(c);
                while let Some(&(_, c)) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                tokens.push(Token::Id(value));
            }
            c => return Err(format!("unexpected character {c:?} at byte {at}")),
        }
    }
    Ok(tokens)
}

/// A small recursive-descent check of the DOT grammar subset gographviz writes (graph, subgraph,
/// attribute, node and edge statements), plus two semantic rules of Kilo's graphs: every node is
/// declared once, and every edge joins declared nodes.
fn check_dot(text: &str) -> Result<(), String> {
    struct Parser {
        tokens: Vec<Token>,
        at: usize,
        nodes: Vec<String>,
        edges: Vec<(String, String)>,
    }
    impl Parser {
        fn peek(&self) -> Option<&Token> {
            self.tokens.get(self.at)
        }
        fn punct(&mut self, punct: &str) -> Result<(), String> {
            match self.peek() {
                Some(Token::Punct(p)) if *p == punct => {
                    self.at += 1;
                    Ok(())
                }
                other => Err(format!("expected {punct:?}, found {other:?} (token {})", self.at)),
            }
        }
        fn is_punct(&self, punct: &str) -> bool {
            matches!(self.peek(), Some(Token::Punct(p)) if *p == punct)
        }
        fn id(&mut self) -> Result<String, String> {
            match self.peek() {
                Some(Token::Id(id) | Token::Quoted(id)) => {
                    let id = id.clone();
                    self.at += 1;
                    Ok(id)
                }
                other => Err(format!("expected an ID, found {other:?} (token {})", self.at)),
            }
        }
        fn attr_list(&mut self) -> Result<(), String> {
            while self.is_punct("[") {
                self.punct("[")?;
                while !self.is_punct("]") {
                    self.id()?;
                    self.punct("=")?;
                    self.id()?;
                    if self.is_punct(",") || self.is_punct(";") {
                        self.at += 1;
                    }
                }
                self.punct("]")?;
            }
            Ok(())
        }
        fn stmt_list(&mut self) -> Result<(), String> {
            while !self.is_punct("}") {
                if self.peek().is_none() {
                    return Err("unexpected end of graph".to_owned());
                }
                if matches!(self.peek(), Some(Token::Id(id)) if id == "subgraph") {
                    self.at += 1;
                    self.id()?;
                    self.punct("{")?;
                    self.stmt_list()?;
                    self.punct("}")?;
                } else {
                    let id = self.id()?;
                    if self.is_punct("=") {
                        self.punct("=")?;
                        self.id()?;
                    } else if self.is_punct("->") {
                        self.punct("->")?;
                        let dst = self.id()?;
                        self.edges.push((id, dst));
                        self.attr_list()?;
                    } else {
                        self.nodes.push(id);
                        self.attr_list()?;
                    }
                }
                if self.is_punct(";") {
                    self.punct(";")?;
                }
            }
            Ok(())
        }
    }

    let mut parser = Parser { tokens: tokenize(text)?, at: 0, nodes: Vec::new(), edges: Vec::new() };
    match parser.id()?.as_str() {
        "digraph" => {}
        other => return Err(format!("expected digraph, found {other:?}")),
    }
    parser.id()?;
    parser.punct("{")?;
    parser.stmt_list()?;
    parser.punct("}")?;
    if parser.at != parser.tokens.len() {
        return Err(format!("tokens after the graph: {:?}", &parser.tokens[parser.at..]));
    }
    let mut nodes = parser.nodes.clone();
    nodes.sort();
    if let Some(pair) = nodes.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("node {:?} declared twice", pair[0]));
    }
    for (src, dst) in &parser.edges {
        for end in [src, dst] {
            if !parser.nodes.contains(end) {
                return Err(format!("edge {src:?} -> {dst:?} names undeclared node {end:?}"));
            }
        }
    }
    Ok(())
}
