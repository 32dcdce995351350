//! The tuned containers: the data structures that make the core fast at the scale of a
//! 5,000-node mesh (see `benches/README.md`), kept apart so that the modules that decide
//! (`topology`, `wireguard`, `routes`, `firewall`, `state`) read as Kilo's algorithm.
//!
//! Each replaces a plain standard-library structure and says why it is faster; each is tested
//! against that plain structure, so the decisions can be read as if they used it.
//!
//! - [`sort`]: routes and address claims sorted as `u64` keys by a radix sort, orders compared
//!   as integers, a permutation applied in place — instead of sorting and comparing `IpNet`s.
//! - [`Routes`]: a sorted vector instead of `BTreeMap<RouteKey, Route>`.
//! - [`Claims`](claims::Claims): who owns each allowed IP, by one sort of all claims instead of a
//!   map from address to owner.
//! - [`RuleList`](rule_list::RuleList): firewall rules de-duplicated by a packed integer identity,
//!   already in canonical order, instead of a hash set of rules and a sort.
//! - [`Groups`](groups::Groups) and [`KnownAddresses`](groups::KnownAddresses): nodes grouped into
//!   segments by a counting sort instead of a map of segments, and allowed-location IPs checked
//!   against address ranges instead of a scan of every allowed IP.
//! - [`Ipv4Blocks`](ipv4_blocks::Ipv4Blocks): the /16 blocks a few ranges touch, as a bitmap,
//!   so the hijack check rules most networks out with one bit instead of a binary search.

pub(crate) mod claims;
pub(crate) mod groups;
pub(crate) mod ipv4_blocks;
pub(crate) mod routes;
pub(crate) mod rule_list;
pub(crate) mod sort;

pub use routes::Routes;
