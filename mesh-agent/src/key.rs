//! The node's WireGuard private key: generated once, kept on disk, never printed.
//!
//! Kilo keeps the key in `/var/lib/kilo/key` (a hostPath, so it survives pod restarts and the
//! node keeps its identity); we read the same file (`--private-key-file`), so a node rolled from
//! Kilo to this agent keeps its key and its peers need no change. [`load_or_generate`] is called
//! once at start, before anything is published.
//!
//! Key generation and the public key come from `wireguard-control` (`Key::generate_private`,
//! `Key::get_public`): the crate is already what the data plane hands keys to WireGuard with, it
//! draws from the OS RNG and clamps as `wg genkey` does, and it adds no second Curve25519
//! implementation to the build. Its `Key` prints the secret in `Debug`, so it never leaves this
//! module: [`PrivateKey`] wraps the bytes and redacts them.

use std::fmt;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use mesh_core::Key;

/// Where Kilo keeps the private key, and the default of `--private-key-file`.
pub const DEFAULT_PRIVATE_KEY_FILE: &str = "/var/lib/kilo/key";

/// Mode of a directory this module creates for the key file.
pub const KEY_DIRECTORY_MODE: u32 = 0o700;

/// Mode of the key file.
pub const KEY_FILE_MODE: u32 = 0o600;

/// A WireGuard private key (Curve25519). `Debug` never shows it and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(Key);

impl PrivateKey {
    /// A new random key from the operating system's RNG, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        PrivateKey(Key::from_bytes(wireguard_control::Key::generate_private().0))
    }

    /// The key with the given raw bytes (for tests and embedders that keep keys elsewhere).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PrivateKey(Key::from_bytes(bytes))
    }

    /// The public key to publish (`kilo.squat.ai/key`).
    pub fn public_key(&self) -> Key {
        Key::from_bytes(wireguard_control::Key(*self.0.as_bytes()).get_public().0)
    }

    /// The secret key. Call this only to hand the key to WireGuard
    /// (e.g. `mesh_netlink::DataplaneConfig::new`) or to render a config file.
    pub const fn expose(&self) -> &Key {
        &self.0
    }

    /// Parses the key file's text as Kilo does (newlines around the key are ignored; we also
    /// ignore other surrounding white space). The reason never quotes the text.
    ///
    /// ```
    /// use mesh_agent::key::PrivateKey;
    /// assert!(PrivateKey::parse(b"d2hhdCBhIHByaXZhdGUga2V5IHRoaXMgaXMgISEhISE=\n").is_ok());
    /// assert_eq!(PrivateKey::parse(b"\n").unwrap_err(), "the file is empty");
    /// ```
    pub fn parse(text: &[u8]) -> Result<Self, &'static str> {
        let text = std::str::from_utf8(text).map_err(|_| "the file is not text")?.trim();
        if text.is_empty() {
            return Err("the file is empty");
        }
        let key = Key::from_base64(text).map_err(|_| "the file does not hold a base64 WireGuard key")?;
        if key.is_zero() {
            return Err("the file holds the all-zero key");
        }
        Ok(PrivateKey(key))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// What [`load_or_generate`] does with a key file that exists but holds no usable key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnusableKeyFile {
    /// Fail, naming the file: a new key is a new identity for the node, which every peer
    /// outside the cluster would have to learn (the default).
    Refuse,
    /// Generate a new key and write it over the file (`--regenerate-private-key`).
    Regenerate,
}

/// How [`load_or_generate`] came by the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from the file.
    Loaded,
    /// The file did not exist: a new key was generated and written.
    Created,
    /// The file could not be used and [`UnusableKeyFile::Regenerate`] was given: a new key was
    /// generated and written over it.
    Replaced {
        /// Why the old file was unusable, e.g. `the file does not hold a base64 WireGuard key`.
        reason: String,
    },
}

/// The node's key pair, and where the private key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedKey {
    /// The private key.
    pub private: PrivateKey,
    /// Its public key.
    pub public: Key,
    /// Whether it was read or generated.
    pub origin: KeyOrigin,
}

/// Why the key file could not be read or written. Each variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Creating the key file's directory failed.
    #[error("failed to create directory {} for the private key: {source}", path.display())]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file exists but could not be read.
    #[error("failed to read private key file {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file exists but holds no usable key, and regenerating was not asked for.
    #[error(
        "private key file {} holds no usable key ({reason}); refusing to start with a new identity: restore the \
         key, or start with --regenerate-private-key to replace it",
        path.display()
    )]
    Unusable {
        /// The key file.
        path: PathBuf,
        /// Why it is unusable, e.g. `the file does not hold a base64 WireGuard key` (never its text).
        reason: String,
    },
    /// Writing a new key file failed; the old file (if any) is unchanged.
    #[error("failed to write private key file {}: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Reads the private key from `path` (usually [`DEFAULT_PRIVATE_KEY_FILE`]), or generates one
/// and writes it there when the file is missing, as Kilo does at start. A file that holds no
/// usable key (empty, not base64, the wrong length, all zero) is an error unless `unusable` is
/// [`UnusableKeyFile::Regenerate`]; Kilo silently replaces it, changing the node's identity.
///
/// A key file that group or others may read or write, or a directory they may write (where
/// they could replace the file), is used, with a warning naming the path and its mode.
///
/// The directory is created with mode 0700 when missing (an existing one is left as it is).
/// A new key file is written with mode 0600, atomically: a temporary file in the same directory
/// is written, flushed and renamed over `path`, so a crash never leaves a truncated key that
/// would silently give the node a new identity at the next start. Generating a key logs Kilo's
/// warning `no private key found on disk; generating one now` (without the key).
///
/// A file that exists but cannot be read (e.g. `path` is a directory) is an error, not a reason
/// to replace it.
pub fn load_or_generate(path: &Path, unusable: UnusableKeyFile) -> Result<LoadedKey, KeyFileError> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty());
    if let Some(directory) = directory {
        ensure_directory(directory)?;
        warn_if_open(directory, "directory of the private key file", 0o022, "others can replace the key");
    }
    let origin = match fs::read(path) {
        Ok(text) => match PrivateKey::parse(&text) {
            Ok(private) => {
                warn_if_open(path, "private key file", 0o077, "others can read or change the key; chmod 600 it");
                let public = private.public_key();
                return Ok(LoadedKey { private, public, origin: KeyOrigin::Loaded });
            }
            Err(reason) if unusable == UnusableKeyFile::Refuse => {
                return Err(KeyFileError::Unusable { path: path.to_owned(), reason: reason.to_owned() });
            }
            Err(reason) => KeyOrigin::Replaced { reason: reason.to_owned() },
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => KeyOrigin::Created,
        Err(source) => return Err(KeyFileError::Read { path: path.to_owned(), source }),
    };
    let reason = match &origin {
        KeyOrigin::Replaced { reason } => reason.as_str(),
        _ => "the file does not exist",
    };
    tracing::warn!(path = %path.display(), reason, "no private key found on disk; generating one now");
    let private = PrivateKey::generate();
    mesh_kube::file::write_atomically(path, private.expose().to_base64().as_bytes(), Some(KEY_FILE_MODE))
        .map_err(|source| KeyFileError::Write { path: path.to_owned(), source })?;
    let public = private.public_key();
    Ok(LoadedKey { private, public, origin })
}

/// Logs a warning when `path`'s mode has any of the `open` bits (group and other permissions).
fn warn_if_open(path: &Path, what: &str, open: u32, consequence: &str) {
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & open != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:04o}"), "{what} is open to group or others: {consequence}");
        }
    }
}

fn ensure_directory(directory: &Path) -> Result<(), KeyFileError> {
    let error = |source| KeyFileError::CreateDirectory { path: directory.to_owned(), source };
    if directory.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(KEY_DIRECTORY_MODE).create(directory).map_err(error)?;
    // The umask may have taken bits away; the mode must be exactly 0700.
    fs::set_permissions(directory, Permissions::from_mode(KEY_DIRECTORY_MODE)).map_err(error)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("mesh-agent-key-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Collects the events logged while it is the default subscriber.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line(format!("{} ", event.metadata().level()));
            event.record(&mut line);
            self.0.lock().unwrap().push(line.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn load_logged(path: &Path) -> (Result<LoadedKey, KeyFileError>, Vec<String>) {
        load_logged_with(path, UnusableKeyFile::Refuse)
    }

    fn load_logged_with(path: &Path, unusable: UnusableKeyFile) -> (Result<LoadedKey, KeyFileError>, Vec<String>) {
        let capture = Capture::default();
        let result = tracing::subscriber::with_default(capture.clone(), || load_or_generate(path, unusable));
        let lines = capture.0.lock().unwrap().clone();
        (result, lines)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn generates_persists_and_reloads_the_same_key() {
        let temp = TempDir::new();
        let path = temp.0.join("var/lib/kilo/key");

        let (first, logs) = load_logged(&path);
        let first = first.unwrap();
        assert_eq!(first.origin, KeyOrigin::Created);
        assert_eq!(first.public, first.private.public_key());
        assert!(!first.public.is_zero());
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(logs[0].starts_with("WARN "), "{logs:?}");
        assert!(logs[0].contains("no private key found on disk; generating one now"), "{logs:?}");

        // Written as Kilo writes it: bare base64, no newline.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, first.private.expose().to_base64());
        assert!(!logs[0].contains(&text), "the log must not contain the key");

        let (second, logs) = load_logged(&path);
        let second = second.unwrap();
        assert_eq!(second.origin, KeyOrigin::Loaded);
        assert_eq!(second.private, first.private);
        assert_eq!(second.public, first.public);
        assert!(logs.is_empty(), "{logs:?}");
        assert!(!temp.0.join("var/lib/kilo/.key.tmp").exists());
    }

    #[test]
    fn modes_are_0700_and_0600() {
        let temp = TempDir::new();
        let directory = temp.0.join("kilo");
        let path = directory.join("key");
        load_or_generate(&path, UnusableKeyFile::Refuse).unwrap();
        assert_eq!(mode(&directory), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        let temp = TempDir::new();
        fs::set_permissions(&temp.0, Permissions::from_mode(0o755)).unwrap();
        load_or_generate(&temp.0.join("key"), UnusableKeyFile::Refuse).unwrap();
        assert_eq!(mode(&temp.0), 0o755);
        assert_eq!(mode(&temp.0.join("key")), 0o600);
    }

    #[test]
    fn reads_a_key_with_trailing_newline_as_wg_genkey_writes_it() {
        let temp = TempDir::new();
        let path = temp.0.join("key");
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private = PrivateKey::from_bytes(hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        let public = Key::from_bytes(hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
        fs::write(&path, format!("{}\n", private.expose().to_base64())).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let loaded = load_or_generate(&path, UnusableKeyFile::Refuse).unwrap();
        assert_eq!(loaded.origin, KeyOrigin::Loaded);
        assert_eq!(loaded.private, private);
        assert_eq!(loaded.public, public);
        // A key that is read is never rewritten (nor its mode changed).
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn a_corrupt_file_is_refused_naming_it_and_left_as_it_is() {
        let temp = TempDir::new();
        let path = temp.0.join("key");
        fs::write(&path, "not a key!").unwrap();
        let (loaded, _) = load_logged(&path);
        let error = loaded.unwrap_err();
        assert!(matches!(error, KeyFileError::Unusable { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "private key file {} holds no usable key (the file does not hold a base64 WireGuard key); refusing \
                 to start with a new identity: restore the key, or start with --regenerate-private-key to replace it",
                path.display()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key!");
    }

    #[test]
    fn a_key_open_to_others_is_used_with_a_warning() {
        let temp = TempDir::new();
        let directory = temp.0.join("kilo");
        let path = directory.join("key");
        load_or_generate(&path, UnusableKeyFile::Refuse).unwrap();
        let (_, logs) = load_logged(&path);
        assert!(logs.is_empty(), "0700 and 0600 are private: {logs:?}");

        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let (loaded, logs) = load_logged(&path);
        assert_eq!(loaded.unwrap().origin, KeyOrigin::Loaded);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(
            logs[0].starts_with("WARN ") && logs[0].contains("private key file is open to group or others"),
            "{logs:?}"
        );
        assert!(logs[0].contains(&path.display().to_string()) && logs[0].contains("\"0644\""), "{logs:?}");

        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&directory, Permissions::from_mode(0o777)).unwrap();
        let (_, logs) = load_logged(&path);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(logs[0].contains("directory of the private key file is open to group or others"), "{logs:?}");
        assert!(logs[0].contains(&directory.display().to_string()) && logs[0].contains("\"0777\""), "{logs:?}");
    }

    #[test]
    fn a_corrupt_file_is_replaced_with_a_warning_when_asked() {
        for (contents, reason) in [
            (&b"not a key!"[..], "the file does not hold a base64 WireGuard key"),
            (b"a2V5MQ==\n", "the file does not hold a base64 WireGuard key"),
            (b"\n", "the file is empty"),
            (b"\xff\xfe", "the file is not text"),
            (b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "the file holds the all-zero key"),
        ] {
            let temp = TempDir::new();
            let path = temp.0.join("key");
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
            let (loaded, logs) = load_logged_with(&path, UnusableKeyFile::Regenerate);
            let loaded = loaded.unwrap();
            assert_eq!(loaded.origin, KeyOrigin::Replaced { reason: reason.to_owned() }, "{contents:?}");
            assert_eq!(logs.len(), 1, "{logs:?}");
            assert!(logs[0].starts_with("WARN "), "{logs:?}");
            assert!(logs[0].contains("no private key found on disk; generating one now"), "{logs:?}");
            assert!(logs[0].contains(reason), "{logs:?}");
            assert!(logs[0].contains(&path.display().to_string()), "{logs:?}");
            assert_eq!(fs::read_to_string(&path).unwrap(), loaded.private.expose().to_base64());
            assert_eq!(mode(&path), 0o600, "a replaced file gets mode 0600");
            assert_eq!(load_or_generate(&path, UnusableKeyFile::Refuse).unwrap().private, loaded.private);
        }
    }

    #[test]
    fn a_stale_temporary_file_does_not_block_writing() {
        let temp = TempDir::new();
        fs::write(temp.0.join(".key.tmp"), "left over").unwrap();
        let loaded = load_or_generate(&temp.0.join("key"), UnusableKeyFile::Refuse).unwrap();
        assert_eq!(loaded.origin, KeyOrigin::Created);
        assert!(!temp.0.join(".key.tmp").exists());
    }

    #[test]
    fn errors_name_the_path() {
        let temp = TempDir::new();
        // The directory cannot be created: a file is in the way.
        let blocker = temp.0.join("blocker");
        fs::write(&blocker, "").unwrap();
        let path = blocker.join("kilo/key");
        let error = load_or_generate(&path, UnusableKeyFile::Refuse).unwrap_err();
        assert!(matches!(error, KeyFileError::CreateDirectory { .. }), "{error:?}");
        assert!(error.to_string().contains(&blocker.join("kilo").display().to_string()), "{error}");
        assert!(error.to_string().starts_with("failed to create directory "), "{error}");

        // The key path exists but cannot be read: it is not replaced.
        let path = temp.0.join("key");
        fs::create_dir(&path).unwrap();
        let error = load_or_generate(&path, UnusableKeyFile::Refuse).unwrap_err();
        assert!(matches!(error, KeyFileError::Read { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("failed to read private key file {}: Is a directory (os error 21)", path.display())
        );
        assert!(path.is_dir());

        // The new key cannot be written: the temporary file's place is taken by a directory.
        let path = temp.0.join("other");
        fs::create_dir(temp.0.join(".other.tmp")).unwrap();
        let error = load_or_generate(&path, UnusableKeyFile::Refuse).unwrap_err();
        assert!(matches!(error, KeyFileError::Write { .. }), "{error:?}");
        assert!(error.to_string().starts_with(&format!("failed to write private key file {}: ", path.display())));
        assert!(!path.exists());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let private = PrivateKey::generate();
        let loaded = LoadedKey { public: private.public_key(), private: private.clone(), origin: KeyOrigin::Loaded };
        let text = format!("{private:?} {loaded:?} {loaded:#?}");
        assert!(text.contains("PrivateKey(<redacted>)"));
        assert!(!text.contains(&private.expose().to_base64()));
        assert!(text.contains(&loaded.public.to_base64()), "the public key may be shown");
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        let bytes = a.expose().as_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0x80, 0);
        assert_eq!(bytes[31] & 0x40, 0x40);
    }

    fn hex(text: &str) -> [u8; 32] {
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
        }
        bytes
    }
}
