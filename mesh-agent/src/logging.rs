//! Logs: `--log-level` (Kilo's levels), `RUST_LOG` next to it, and `--log-format text|json`, to
//! standard error.
//!
//! Colours only when standard error is a terminal: `kubectl logs`, journald and log shippers get
//! plain text.

use std::io::{IsTerminal as _, Write as _};

use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How the agent logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Kilo's `--log-level`: `all`, `debug`, `info`, `warn`, `error` or `none`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
    /// Extra `tracing` directives (`RUST_LOG`), applied after the level's, so they can raise or
    /// lower the level of one crate or module (`RUST_LOG=mesh_netlink=debug`).
    pub directives: Option<String>,
    /// Colour codes in text logs.
    pub ansi: bool,
}

impl LogConfig {
    /// The configuration for `--log-level` and `--log-format`, with `RUST_LOG` from the
    /// environment and colours when standard error is a terminal.
    pub fn from_flags(level: &str, format: &str) -> Self {
        LogConfig {
            level: level.to_owned(),
            format: format.to_owned(),
            directives: std::env::var("RUST_LOG").ok().filter(|directives| !directives.trim().is_empty()),
            ansi: std::io::stderr().is_terminal(),
        }
    }

    /// The filter: our crates at the requested level and the libraries under us only from
    /// warnings up (everything at `all`), then `RUST_LOG`'s directives. `None` for `none`.
    ///
    /// `Err` names a `RUST_LOG` that does not parse; the level's filter is used instead.
    pub fn filter(&self) -> Option<(EnvFilter, Option<String>)> {
        let base = match self.level.as_str() {
            "none" => return None,
            "all" => "trace".to_owned(),
            level => {
                let directive = match level {
                    "warn" | "error" | "debug" => level,
                    _ => "info",
                };
                format!(
                    "warn,mesh_agent={directive},mesh_core={directive},mesh_kube={directive},mesh_netlink={directive}"
                )
            }
        };
        let Some(directives) = &self.directives else { return Some((EnvFilter::new(base), None)) };
        match EnvFilter::try_new(format!("{base},{directives}")) {
            Ok(filter) => Some((filter, None)),
            Err(error) => Some((EnvFilter::new(base), Some(format!("RUST_LOG={directives:?} ignored: {error}")))),
        }
    }

    /// The subscriber, writing to `writer`; `None` for `--log-level=none`.
    pub fn dispatch<W>(&self, writer: W) -> Option<Dispatch>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let (filter, problem) = self.filter()?;
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(self.ansi);
        let dispatch = if self.format == "json" {
            Dispatch::new(builder.json().finish())
        } else {
            Dispatch::new(builder.finish())
        };
        if let Some(problem) = problem {
            tracing::dispatcher::with_default(&dispatch, || tracing::warn!("{problem}"));
        }
        Some(dispatch)
    }
}

/// Installs the global subscriber for `--log-level` and `--log-format`, to standard error.
pub fn init(level: &str, format: &str) {
    let Some(dispatch) = LogConfig::from_flags(level, format).dispatch(std::io::stderr) else { return };
    // A second initialisation (tests) keeps the first subscriber.
    drop(tracing::dispatcher::set_global_default(dispatch));
}

/// Writes the error that ends the process to `writer`: a JSON line like every other log line
/// with `--log-format=json`, else `mesh-agent: MESSAGE`.
pub fn fatal<W>(format: &str, message: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    if format == "json" {
        let config = LogConfig { level: "error".into(), format: format.into(), directives: None, ansi: false };
        if let Some(dispatch) = config.dispatch(writer) {
            tracing::dispatcher::with_default(&dispatch, || tracing::error!(target: "mesh_agent", "{message}"));
        }
    } else {
        let mut writer = writer.make_writer();
        let _ = writeln!(writer, "mesh-agent: {message}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    fn config(level: &str, format: &str, directives: Option<&str>) -> LogConfig {
        LogConfig { level: level.into(), format: format.into(), directives: directives.map(Into::into), ansi: false }
    }

    /// Logs one line at each level from `mesh_agent` and one from a library, returns the output.
    fn log_with(config: &LogConfig) -> String {
        let captured = Captured::default();
        let Some(dispatch) = config.dispatch(captured.clone()) else { return String::new() };
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::debug!(target: "mesh_agent::agent", "agent debug");
            tracing::info!(target: "mesh_agent::agent", peer = "a", "agent info");
            tracing::info!(target: "kube_runtime::watcher", "library info");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_level_applies_to_our_crates_and_libraries_log_from_warnings_up() {
        let text = log_with(&config("info", "text", None));
        assert!(text.contains("agent info"), "{text}");
        assert!(!text.contains("agent debug"), "{text}");
        assert!(!text.contains("library info"), "{text}");
        assert!(log_with(&config("debug", "text", None)).contains("agent debug"));
        assert_eq!(log_with(&config("none", "text", None)), "");
    }

    #[test]
    fn rust_log_raises_or_lowers_single_targets_next_to_the_level() {
        let text = log_with(&config("info", "text", Some("kube_runtime=info,mesh_agent::agent=debug")));
        assert!(text.contains("agent debug"), "{text}");
        assert!(text.contains("library info"), "{text}");
        let quiet = log_with(&config("info", "text", Some("mesh_agent=warn")));
        assert!(!quiet.contains("agent info"), "{quiet}");
    }

    #[test]
    fn a_bad_rust_log_is_reported_and_the_level_still_applies() {
        let text = log_with(&config("info", "text", Some("mesh_agent=loud")));
        assert!(text.contains("RUST_LOG=\"mesh_agent=loud\" ignored"), "{text}");
        assert!(text.contains("agent info"), "{text}");
    }

    #[test]
    fn text_logs_have_no_colour_codes_unless_asked() {
        let plain = log_with(&config("info", "text", None));
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        let coloured = log_with(&LogConfig { ansi: true, ..config("info", "text", None) });
        assert!(coloured.contains('\u{1b}'), "{coloured:?}");
    }

    #[test]
    fn fatal_errors_take_the_log_format() {
        let captured = Captured::default();
        fatal("json", "failed to start", captured.clone());
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["fields"]["message"], "failed to start");
        let captured = Captured::default();
        fatal("text", "failed to start", captured.clone());
        assert_eq!(String::from_utf8(captured.0.lock().unwrap().clone()).unwrap(), "mesh-agent: failed to start\n");
    }

    #[test]
    fn json_logs_are_one_object_per_line() {
        let text = log_with(&config("info", "json", None));
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["fields"]["message"], "agent info");
        assert_eq!(line["fields"]["peer"], "a");
        assert_eq!(line["level"], "INFO");
    }
}
