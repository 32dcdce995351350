//! `iptables-save` output, whatever it holds: the mesh's part of it is read without panicking,
//! for both families.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::Family;

fuzz_target!(|data: &[u8]| {
    let Ok(dump) = std::str::from_utf8(data) else { return };
    for family in [Family::Ipv4, Family::Ipv6] {
        let firewall = mesh_netlink::parse_iptables_save(family, dump);
        for rule in &firewall.rules {
            let _ = rule.args();
        }
    }
});
