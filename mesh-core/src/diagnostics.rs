//! Per-object problems as values: the rest of the mesh is computed, the problem is reported.

use serde::Serialize;

/// What kind of object a diagnostic is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// A Node.
    Node,
    /// A Peer.
    Peer,
}

/// An object left out of the mesh, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Skipped {
    /// Node or peer.
    pub kind: ObjectKind,
    /// The object's name.
    pub name: String,
    /// Why it was left out, e.g. `not ready: last-seen 75 s ago (limit 60 s)`.
    pub reason: String,
}

/// A value that was ignored or overridden while the object itself stayed in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Warning {
    /// Node or peer.
    pub kind: ObjectKind,
    /// The object's name.
    pub name: String,
    /// The annotation or field the value came from, if one.
    pub annotation: Option<String>,
    /// The offending value, if one.
    pub value: Option<String>,
    /// What was done about it.
    pub reason: String,
}

impl Warning {
    /// How many characters of an offending value a warning shows.
    pub const VALUE_SHOWN: usize = 120;

    /// The value as a warning shows it: whole when short, else its first
    /// [`VALUE_SHOWN`](Self::VALUE_SHOWN) characters and its length (an annotation may hold a
    /// megabyte, and warnings are logged).
    ///
    /// ```
    /// use mesh_core::Warning;
    /// assert_eq!(Warning::excerpt("1.2.3.4:99999"), "1.2.3.4:99999");
    /// let long = "x".repeat(1_000_000);
    /// assert_eq!(Warning::excerpt(&long), format!("{}… (1000000 bytes)", "x".repeat(120)));
    /// ```
    pub fn excerpt(value: &str) -> String {
        match value.char_indices().nth(Self::VALUE_SHOWN) {
            None => value.to_owned(),
            Some((end, _)) => format!("{}… ({} bytes)", &value[..end], value.len()),
        }
    }
}

impl Skipped {
    /// A skipped node.
    pub fn node(name: &str, reason: impl Into<String>) -> Self {
        Skipped { kind: ObjectKind::Node, name: name.to_owned(), reason: reason.into() }
    }

    /// A skipped peer.
    pub fn peer(name: &str, reason: impl Into<String>) -> Self {
        Skipped { kind: ObjectKind::Peer, name: name.to_owned(), reason: reason.into() }
    }
}
