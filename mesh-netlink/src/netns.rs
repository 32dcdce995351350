//! Doing things inside another network namespace from one process.
//!
//! A netlink socket belongs to the namespace of the thread that creates it, and a child process
//! starts in the namespace of the thread that forks it. So the data plane either switches the
//! calling thread in and out around a synchronous call ([`Namespace::enter`], used to open the
//! rtnetlink socket), or runs the work on a short-lived thread that switches for good
//! ([`Namespace::run`], used for `iptables-restore` and WireGuard calls).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// The network namespace the data plane works in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// The namespace of the calling process (what the agent uses).
    #[default]
    Current,
    /// The namespace behind a file such as `/run/netns/NAME` or `/proc/PID/ns/net`.
    Path(PathBuf),
}

impl Namespace {
    /// A namespace created with `ip netns add NAME` (`/run/netns/NAME`).
    pub fn named(name: &str) -> Self {
        Namespace::Path(Path::new("/run/netns").join(name))
    }

    /// Runs `f` on the calling thread while the thread is inside the namespace, then switches
    /// back. `f` must not yield to an async runtime (it would resume on another thread).
    ///
    /// # Panics
    ///
    /// If the thread cannot return to its own namespace: continuing would silently act on the
    /// wrong namespace.
    pub(crate) fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let Namespace::Path(path) = self else { return Ok(f()) };
        let own = File::open("/proc/thread-self/ns/net").map_err(|source| Error::Namespace {
            operation: "open the thread's own network namespace".to_owned(),
            source,
        })?;
        let target = self.open(path)?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|errno| self.enter_error(path, errno))?;
        let result = f();
        if let Err(errno) = setns(&own, CloneFlags::CLONE_NEWNET) {
            panic!("failed to return from network namespace {}: {errno}", path.display());
        }
        Ok(result)
    }

    /// Runs `f` inside the namespace on a new thread (or on the calling thread for
    /// [`Namespace::Current`]), blocking until it returns. A socket `f` creates belongs to the
    /// namespace for its whole life, wherever it is used afterwards.
    ///
    /// ```no_run
    /// use mesh_netlink::Namespace;
    ///
    /// // A listener inside `ip netns add blue`, served from any thread of this process.
    /// let listener = Namespace::named("blue").run(|| std::net::TcpListener::bind("127.0.0.1:8080"))??;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let Namespace::Path(path) = self else { return Ok(f()) };
        let target = self.open(path)?;
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                setns(&target, CloneFlags::CLONE_NEWNET).map_err(|errno| self.enter_error(path, errno))?;
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`Namespace::run`] on the async runtime's blocking pool.
    pub(crate) async fn run_blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let namespace = self.clone();
        match tokio::task::spawn_blocking(move || namespace.run(f)).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(Error::Namespace {
                operation: format!("run a blocking task in {self}"),
                source: io::Error::other(error.to_string()),
            }),
        }
    }

    fn open(&self, path: &Path) -> Result<File> {
        File::open(path).map_err(|source| Error::Namespace {
            operation: format!("open network namespace {}", path.display()),
            source,
        })
    }

    fn enter_error(&self, path: &Path, errno: nix::Error) -> Error {
        Error::Namespace {
            operation: format!("enter network namespace {}", path.display()),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespace::Current => f.write_str("the current network namespace"),
            Namespace::Path(path) => write!(f, "network namespace {}", path.display()),
        }
    }
}
