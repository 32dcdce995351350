//! Endpoints (`host:port`, `[v6]:port`, DNS names) as annotations and Peers give them: parsing
//! never panics, and what parses prints back to text that parses to the same endpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::Endpoint;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(endpoint) = Endpoint::parse(text) {
        let printed = endpoint.to_string();
        let again = Endpoint::parse(&printed).unwrap_or_else(|error| panic!("{printed:?} does not parse: {error:?}"));
        assert_eq!(again, endpoint, "{text:?} printed as {printed:?}");
    }
});
