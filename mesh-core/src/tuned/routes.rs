//! [`Routes`]: the routes of a node as a sorted vector instead of a `BTreeMap`.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::sort::{order_key, permute, radix_sort};
use crate::routes::Route;
use crate::state::RouteKey;

impl RouteKey {
    /// The key's order as integers (table, family, address, prefix length), which compare in a
    /// few instructions where `RouteKey::cmp` compares the `IpNet`s byte by byte.
    pub(crate) fn order(&self) -> (u64, u128) {
        let (family, bits) = order_key(&self.dst);
        (u64::from(self.table) << 16 | u64::from(family), bits)
    }
}

/// Routes by kernel identity: a map from [`RouteKey`] to [`Route`], kept as a vector sorted by
/// key with one route per key. It offers the part of `BTreeMap<RouteKey, Route>`'s interface
/// the mesh needs, but is built with one sort and walked as a slice: a leader of a 5,000-node
/// mesh holds 10,000 routes, and a B-tree of them cost more to build than to compute them.
///
/// A route is always stored under its own key: methods that take a key with a route
/// ([`Routes::insert`], `Extend<(RouteKey, Route)>`, `FromIterator<(RouteKey, Route)>`, as a
/// map would) panic when the key is not `route.key()`.
///
/// ```
/// use mesh_core::{Dev, Route, Routes, MAIN_TABLE};
///
/// let route = |dst: &str, gateway: &str| Route {
///     dst: dst.parse().unwrap(),
///     gateway: Some(gateway.parse().unwrap()),
///     dev: Dev::Kilo,
///     src: None,
///     table: MAIN_TABLE,
///     onlink: true,
/// };
/// // As when a `BTreeMap` is collected, the last route for a key wins.
/// let routes: Routes =
///     [route("10.2.1.0/24", "10.4.0.1"), route("10.2.0.0/24", "10.4.0.2"), route("10.2.1.0/24", "10.4.0.3")]
///         .into_iter()
///         .collect();
/// assert_eq!(routes.len(), 2);
/// assert_eq!(routes.values().next().unwrap().dst.to_string(), "10.2.0.0/24");
/// assert_eq!(routes.get(&route("10.2.1.0/24", "10.4.0.3").key()).unwrap().gateway.unwrap().to_string(), "10.4.0.3");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// No routes.
    pub const fn new() -> Self {
        Routes(Vec::new())
    }

    /// Routes in any order; of several with one key, the last is kept (as a map keeps the last
    /// value inserted). `replaced(earlier, later)` is called for each route that a later one
    /// with the same key replaces, in that order.
    pub fn from_vec(mut routes: Vec<Route>, mut replaced: impl FnMut(&Route, &Route)) -> Self {
        if routes.is_sorted_by(|a, b| a.key().order() < b.key().order()) {
            return Routes(routes);
        }
        // Sort integers that hold the key and, below it, the input position, so the input order
        // among routes with one key is kept. With IPv4 destinations, few tables (numbered in
        // their order) and fewer than 2^18 routes, each fits in a `u64`, which a radix sort
        // orders in linear time.
        let mut tables: Vec<u32> = Vec::new();
        for route in &routes {
            if tables.last() != Some(&route.table) && !tables.contains(&route.table) && tables.len() <= 256 {
                tables.push(route.table);
            }
        }
        tables.sort_unstable();
        let ipv4_keys = (routes.len() < 1 << 18 && tables.len() <= 256).then(|| {
            let ipv4_key = |(position, route): (usize, &Route)| match route.dst {
                IpNet::V4(net) => {
                    let table = tables.binary_search(&route.table).ok()? as u64;
                    let prefix = u64::from(net.prefix_len());
                    Some(table << 56 | u64::from(u32::from(net.addr())) << 24 | prefix << 18 | position as u64)
                }
                IpNet::V6(_) => None,
            };
            routes.iter().enumerate().map(ipv4_key).collect::<Option<Vec<u64>>>()
        });
        let (mut sources, repeats): (Vec<usize>, bool) = if let Some(Some(mut keys)) = ipv4_keys {
            radix_sort(&mut keys, 2..8);
            let repeats = keys.windows(2).any(|pair| pair[0] >> 18 == pair[1] >> 18);
            (keys.into_iter().map(|key| (key & 0x3_ffff) as usize).collect(), repeats)
        } else {
            let mut keys: Vec<((u64, u128), usize)> =
                routes.iter().enumerate().map(|(position, route)| (route.key().order(), position)).collect();
            keys.sort_unstable();
            let repeats = keys.windows(2).any(|pair| pair[0].0 == pair[1].0);
            (keys.into_iter().map(|(_, position)| position).collect(), repeats)
        };
        permute(&mut routes, &mut sources);
        if repeats {
            // `dedup_by` hands each route with the one kept before it; the later one takes its place.
            routes.dedup_by(|later, kept| {
                let same_key = later.key() == kept.key();
                if same_key {
                    replaced(kept, later);
                    *kept = *later;
                }
                same_key
            });
        }
        Routes(routes)
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The routes, sorted by key.
    pub fn as_slice(&self) -> &[Route] {
        &self.0
    }

    /// The routes, sorted by key.
    pub fn values(&self) -> std::slice::Iter<'_, Route> {
        self.0.iter()
    }

    /// The routes, sorted by key.
    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.0.iter()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = RouteKey> + '_ {
        self.0.iter().map(Route::key)
    }

    fn position(&self, key: &RouteKey) -> Result<usize, usize> {
        let order = key.order();
        self.0.binary_search_by(|route| route.key().order().cmp(&order))
    }

    /// The route with this key.
    pub fn get(&self, key: &RouteKey) -> Option<&Route> {
        self.position(key).ok().map(|index| &self.0[index])
    }

    /// Whether there is a route with this key.
    pub fn contains_key(&self, key: &RouteKey) -> bool {
        self.position(key).is_ok()
    }

    /// Adds `route` under `key`, which must be `route.key()`, and returns the route it replaces.
    /// Inserting in key order is cheapest; each insertion elsewhere moves the routes after it.
    ///
    /// # Panics
    ///
    /// When `key` is not `route.key()`.
    pub fn insert(&mut self, key: RouteKey, route: Route) -> Option<Route> {
        assert_eq!(key, route.key(), "a route is stored under its own key");
        match self.position(&key) {
            Ok(index) => Some(std::mem::replace(&mut self.0[index], route)),
            Err(index) => {
                self.0.insert(index, route);
                None
            }
        }
    }

    /// Removes and returns the route with this key.
    pub fn remove(&mut self, key: &RouteKey) -> Option<Route> {
        self.position(key).ok().map(|index| self.0.remove(index))
    }

    /// Applies changes in order, each a route to add or replace (`Some`) or a key to remove
    /// (`None`), with one sort and one walk however many there are.
    pub(crate) fn apply(&mut self, changes: Vec<(RouteKey, Option<Route>)>) {
        if changes.is_empty() {
            return;
        }
        let mut changes: Vec<((u64, u128), Option<Route>)> =
            changes.into_iter().map(|(key, change)| (key.order(), change)).collect();
        // Stable: of several changes to one key, the last decides.
        changes.sort_by_key(|(order, _)| *order);
        let mut next = Vec::with_capacity(self.0.len() + changes.len());
        let mut current = std::mem::take(&mut self.0).into_iter().peekable();
        let mut changes = changes.into_iter().peekable();
        while let Some((order, mut change)) = changes.next() {
            while let Some((_, later)) = changes.next_if(|(later_order, _)| *later_order == order) {
                change = later;
            }
            while let Some(route) = current.next_if(|route| route.key().order() < order) {
                next.push(route);
            }
            // The change replaces or removes the route with its key, if there is one.
            current.next_if(|route| route.key().order() == order);
            next.extend(change);
        }
        next.extend(current);
        self.0 = next;
    }
}

impl fmt::Debug for Routes {
    /// As a map from key to route, like `BTreeMap<RouteKey, Route>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|route| (route.key(), route))).finish()
    }
}

impl Serialize for Routes {
    /// As a map from key to route, like `BTreeMap<RouteKey, Route>`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|route| (route.key(), route)))
    }
}

impl FromIterator<Route> for Routes {
    /// Of several routes with one key, the last is kept.
    fn from_iter<I: IntoIterator<Item = Route>>(routes: I) -> Self {
        Routes::from_vec(routes.into_iter().collect(), |_, _| {})
    }
}

impl FromIterator<(RouteKey, Route)> for Routes {
    /// Of several routes with one key, the last is kept. Panics when a key is not its route's.
    fn from_iter<I: IntoIterator<Item = (RouteKey, Route)>>(entries: I) -> Self {
        entries.into_iter().map(own_key).collect()
    }
}

impl Extend<Route> for Routes {
    /// A route replaces the one with its key.
    fn extend<I: IntoIterator<Item = Route>>(&mut self, routes: I) {
        let mut all = std::mem::take(&mut self.0);
        all.extend(routes);
        *self = Routes::from_vec(all, |_, _| {});
    }
}

impl Extend<(RouteKey, Route)> for Routes {
    /// A route replaces the one with its key. Panics when a key is not its route's.
    fn extend<I: IntoIterator<Item = (RouteKey, Route)>>(&mut self, entries: I) {
        self.extend(entries.into_iter().map(own_key));
    }
}

fn own_key((key, route): (RouteKey, Route)) -> Route {
    assert_eq!(key, route.key(), "a route is stored under its own key");
    route
}

impl<'a> IntoIterator for &'a Routes {
    type Item = &'a Route;
    type IntoIter = std::slice::Iter<'a, Route>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Routes {
    type Item = Route;
    type IntoIter = std::vec::IntoIter<Route>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use crate::MAIN_TABLE;
    use crate::routes::Dev;

    fn route(dst: &str, gateway: u8, table: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(IpAddr::from([10, 4, 0, gateway])),
            dev: Dev::Kilo,
            src: None,
            table,
            onlink: true,
        }
    }

    #[test]
    fn routes_sort_by_key_and_keep_the_last_of_a_key() {
        let input = vec![
            route("fd00::/64", 1, MAIN_TABLE),
            route("10.2.0.0/24", 2, 1107),
            route("10.2.0.0/24", 3, MAIN_TABLE),
            route("10.2.0.0/16", 4, MAIN_TABLE),
            route("10.2.0.0/24", 5, MAIN_TABLE),
            route("10.2.0.0/24", 5, MAIN_TABLE),
            route("10.1.0.0/24", 6, MAIN_TABLE),
        ];
        let mut replaced = Vec::new();
        let routes = Routes::from_vec(input.clone(), |earlier, later| replaced.push((earlier.gateway, later.gateway)));
        let expected: BTreeMap<RouteKey, Route> = input.iter().map(|route| (route.key(), *route)).collect();
        assert_eq!(routes.values().copied().collect::<Vec<_>>(), expected.values().copied().collect::<Vec<_>>());
        assert_eq!(format!("{routes:?}"), format!("{expected:?}"));
        let gateway = |last: u8| Some(IpAddr::from([10, 4, 0, last]));
        assert_eq!(replaced, [(gateway(3), gateway(5)), (gateway(5), gateway(5))]);
        assert_eq!(input.into_iter().collect::<Routes>(), routes);
    }

    #[test]
    fn routes_in_many_tables_sort_as_a_map_does() {
        // More tables than the integer keys number, and enough routes for the radix sort.
        let input: Vec<Route> = (0..3000u32)
            .map(|i| route(&format!("10.{}.{}.0/24", i % 7, i % 251), (i % 5) as u8, 1000 + (i * 7919) % 401))
            .collect();
        let expected: BTreeMap<RouteKey, Route> = input.iter().map(|route| (route.key(), *route)).collect();
        let routes = Routes::from_vec(input.clone(), |_, _| {});
        assert!(routes.values().eq(expected.values()));
        let few_tables: Vec<Route> = input.iter().map(|route| Route { table: route.table % 3, ..*route }).collect();
        let expected: BTreeMap<RouteKey, Route> = few_tables.iter().map(|route| (route.key(), *route)).collect();
        assert!(Routes::from_vec(few_tables, |_, _| {}).values().eq(expected.values()));
    }

    #[test]
    fn routes_behave_as_a_map_by_key() {
        let mut routes = Routes::new();
        let mut map = BTreeMap::new();
        for (index, dst) in ["10.2.3.0/24", "10.2.1.0/24", "10.2.3.0/24", "10.2.2.0/24"].iter().enumerate() {
            let route = route(dst, index as u8, MAIN_TABLE);
            assert_eq!(routes.insert(route.key(), route), map.insert(route.key(), route));
        }
        let gone = route("10.2.1.0/24", 0, MAIN_TABLE).key();
        assert_eq!(routes.remove(&gone), map.remove(&gone));
        assert_eq!(routes.remove(&gone), None);
        assert_eq!(routes.keys().collect::<Vec<_>>(), map.keys().copied().collect::<Vec<_>>());
        assert_eq!(
            routes.get(&route("10.2.3.0/24", 0, MAIN_TABLE).key()).and_then(|r| r.gateway),
            map.values().nth(1).and_then(|r| r.gateway)
        );
        routes.extend([route("10.2.2.0/24", 9, MAIN_TABLE)].map(|route| (route.key(), route)));
        assert_eq!(
            routes.get(&route("10.2.2.0/24", 0, MAIN_TABLE).key()).and_then(|r| r.gateway),
            Some(IpAddr::from([10, 4, 0, 9]))
        );
        assert_eq!(routes.len(), 2);
    }

    #[test]
    #[should_panic(expected = "own key")]
    fn a_route_is_only_stored_under_its_own_key() {
        let route = route("10.2.0.0/24", 1, MAIN_TABLE);
        Routes::new().insert(RouteKey { table: 1107, dst: route.dst }, route);
    }

    #[test]
    fn applied_changes_equal_changes_one_by_one() {
        let start: Routes =
            ["10.2.0.0/24", "10.2.1.0/24", "10.2.2.0/24"].map(|dst| route(dst, 1, MAIN_TABLE)).into_iter().collect();
        let changes = vec![
            (route("10.2.1.0/24", 0, MAIN_TABLE).key(), None),
            (route("10.2.9.0/24", 2, MAIN_TABLE).key(), Some(route("10.2.9.0/24", 2, MAIN_TABLE))),
            (route("10.2.1.0/24", 3, MAIN_TABLE).key(), Some(route("10.2.1.0/24", 3, MAIN_TABLE))),
            (route("10.2.0.0/24", 4, MAIN_TABLE).key(), Some(route("10.2.0.0/24", 4, MAIN_TABLE))),
            (route("10.2.0.0/24", 4, MAIN_TABLE).key(), None),
            (route("10.2.5.0/24", 4, MAIN_TABLE).key(), None),
        ];
        let mut one_by_one = start.clone();
        for (key, change) in &changes {
            match change {
                Some(route) => one_by_one.insert(*key, *route),
                None => one_by_one.remove(key),
            };
        }
        let mut together = start;
        together.apply(changes);
        assert_eq!(together, one_by_one);
        assert_eq!(together.len(), 3);
    }
}
