//! WireGuard keys as annotations, Peers and the key file hold them: parsing never panics, and a
//! key that parses prints back to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_agent::key::PrivateKey;
use mesh_core::Key;

fuzz_target!(|data: &[u8]| {
    if let Ok(private) = PrivateKey::parse(data) {
        assert!(!private.expose().is_zero());
        let _ = private.public_key();
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = Key::from_base64(text) {
        assert_eq!(Key::from_base64(&key.to_base64()).ok(), Some(key));
    }
});
