//! WireGuard keys as values.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A 32-byte WireGuard public key (Curve25519), written in standard base64.
///
/// The all-zero key is Kilo's "no key": model fields that may be absent use `Option<Key>` and
/// translation maps a zero or unparsable key to `None`.
///
/// ```
/// use mesh_core::Key;
/// let key: Key = "a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".parse().unwrap();
/// assert_eq!(&key.as_bytes()[..4], b"key1");
/// assert_eq!(key.to_string(), "a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key([u8; 32]);

/// Why a string is not a WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard base64.
    #[error("WireGuard key is not base64 encoded: {0}")]
    NotBase64(String),
    /// The decoded key is not 32 bytes long.
    #[error("WireGuard key has invalid length {0} (expected 32 bytes)")]
    InvalidLength(usize),
}

impl Key {
    /// The key with the given raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }

    /// The raw bytes of the key.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses a standard-base64 key, as `wg` prints it.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(text).map_err(|error| KeyError::NotBase64(error.to_string()))?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::InvalidLength(bytes.len()))?;
        Ok(Key(bytes))
    }

    /// The standard-base64 text of the key.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Whether this is the all-zero key, which WireGuard and Kilo treat as "no key".
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Key::from_base64(s)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Key::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// A WireGuard preshared key. It is a secret: `Debug` never prints it and it does not serialize.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PresharedKey(Key);

impl PresharedKey {
    /// Wraps a key that is used as a preshared key.
    pub const fn new(key: Key) -> Self {
        PresharedKey(key)
    }

    /// The secret key. Call this only to hand the key to WireGuard or to render a config file.
    pub const fn expose(&self) -> &Key {
        &self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_base64() {
        let key = Key::from_bytes(*b"key1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(key.to_base64(), "a2V5MQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(Key::from_base64(&key.to_base64()), Ok(key));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(Key::from_base64("not base64!"), Err(KeyError::NotBase64(_))));
        assert_eq!(Key::from_base64("a2V5MQ=="), Err(KeyError::InvalidLength(4)));
        assert!(Key::from_bytes([0; 32]).is_zero());
    }

    #[test]
    fn preshared_key_debug_is_redacted() {
        let psk = PresharedKey::new(Key::from_bytes([7; 32]));
        assert_eq!(format!("{psk:?}"), "PresharedKey(<redacted>)");
    }
}
