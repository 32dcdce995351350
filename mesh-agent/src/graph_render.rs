//! Renders the mesh graph for `/graph` with Graphviz's `dot`, as Kilo does, bounded so that
//! monitoring can never starve the agent.
//!
//! A 5,000-node graph takes `dot` tens of seconds, and every scrape of a dashboard would start
//! another process. So: one render at a time (the others wait for it and usually find its result
//! in the cache), a time limit after which `dot` is killed, `dot` killed as well when the client
//! goes away (the handler's future is dropped), and the last result cached for the same graph,
//! format and layout.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tokio::sync::Mutex;

/// Why a graph could not be rendered. Each names the program and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The Graphviz program is not installed.
    #[error(
        "cannot render the graph as {format}: Graphviz's `{program}` is not installed (install the graphviz \
         package, or ask for format=dot)"
    )]
    Missing {
        /// The program that was looked for.
        program: String,
        /// The format that was asked for.
        format: String,
    },
    /// Rendering took longer than allowed; `dot` was killed.
    #[error("rendering the graph with `{program}` took more than {limit:?}; killed it (ask for format=dot)")]
    TimedOut {
        /// The program.
        program: String,
        /// The time limit.
        limit: Duration,
    },
    /// The program failed.
    #[error("`{program}` failed to render the graph ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of its standard error.
        stderr: String,
    },
    /// Starting or talking to the program failed.
    #[error("running `{program}` to render the graph: {source}")]
    Io {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A rendered graph: its content type and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The MIME type of the format.
    pub content_type: &'static str,
    /// The image.
    pub bytes: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
struct CacheKey {
    dot: String,
    format: String,
    layout: String,
}

/// Renders graphs one at a time, with a time limit, caching the last one.
#[derive(Debug)]
pub struct GraphRenderer {
    program: String,
    limit: Duration,
    /// Held while rendering: the lock is what makes renders one at a time.
    last: Mutex<Option<(CacheKey, Rendered)>>,
}

impl Default for GraphRenderer {
    fn default() -> Self {
        GraphRenderer::new("dot", Duration::from_secs(10))
    }
}

impl GraphRenderer {
    /// A renderer running `program` (Graphviz's `dot`) for at most `limit` per graph, waiting
    /// included.
    pub fn new(program: impl Into<String>, limit: Duration) -> Self {
        GraphRenderer { program: program.into(), limit, last: Mutex::new(None) }
    }

    /// Renders `dot` as `format` (`svg`, `png`, …) with the Graphviz `layout` (`circo`, …).
    pub async fn render(&self, dot: String, format: &str, layout: &str) -> Result<Rendered, RenderError> {
        let key = CacheKey { dot, format: format.to_owned(), layout: layout.to_owned() };
        let timed_out = || RenderError::TimedOut { program: self.program.clone(), limit: self.limit };
        tokio::time::timeout(self.limit, async {
            let mut last = self.last.lock().await;
            if let Some((cached, rendered)) = last.as_ref()
                && *cached == key
            {
                return Ok(rendered.clone());
            }
            let rendered = self.run(&key).await?;
            *last = Some((key, rendered.clone()));
            Ok(rendered)
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Runs the program once. Dropping the future kills it (`kill_on_drop`), so a timeout or a
    /// client that leaves ends the render.
    async fn run(&self, key: &CacheKey) -> Result<Rendered, RenderError> {
        let io = |source| RenderError::Io { program: self.program.clone(), source };
        let mut child = match Command::new(&self.program)
            .arg(format!("-K{}", key.layout))
            .arg(format!("-T{}", key.format))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(RenderError::Missing { program: self.program.clone(), format: key.format.clone() });
            }
            Err(error) => return Err(io(error)),
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let dot = key.dot.clone();
        // Written concurrently with reading the output: a large graph fills both pipes.
        let writer = async move {
            let result = stdin.write_all(dot.as_bytes()).await;
            drop(stdin);
            result
        };
        let (written, output) = tokio::join!(writer, child.wait_with_output());
        let output = output.map_err(io)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(RenderError::Failed {
                program: self.program.clone(),
                status: output.status,
                stderr: stderr.chars().take(500).collect::<String>().trim().to_owned(),
            });
        }
        written.map_err(io)?;
        Ok(Rendered { content_type: content_type(&key.format), bytes: output.stdout })
    }
}

fn content_type(format: &str) -> &'static str {
    match format {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "bmp" => "image/bmp",
        "gif" => "image/gif",
        "json" => "application/json",
        "ps" => "application/postscript",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};

    use super::*;

    /// A stand-in for `dot` that records each start and then runs `body`.
    fn fake_dot(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("dot");
        let starts = dir.join("starts");
        std::fs::write(&path, format!("#!/bin/sh\necho start >> {}\n{body}\n", starts.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn starts(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("starts")).map_or(0, |text| text.lines().count())
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mesh-graph-render-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_missing_graphviz_is_named_with_the_fix() {
        let renderer = GraphRenderer::new("/nonexistent/dot", Duration::from_secs(5));
        let error = renderer.render("digraph {}".into(), "svg", "circo").await.unwrap_err();
        assert!(matches!(error, RenderError::Missing { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("`/nonexistent/dot` is not installed") && text.contains("graphviz"), "{text}");
    }

    #[tokio::test]
    async fn renders_once_per_graph_and_caches_the_result() {
        let dir = temp_dir("cache");
        let program = fake_dot(&dir, "cat");
        let renderer = GraphRenderer::new(program.to_str().unwrap(), Duration::from_secs(5));
        let first = renderer.render("digraph a {}".into(), "svg", "circo").await.unwrap();
        assert_eq!(first, Rendered { content_type: "image/svg+xml", bytes: b"digraph a {}".to_vec() });
        let again = renderer.render("digraph a {}".into(), "svg", "circo").await.unwrap();
        assert_eq!(again, first);
        assert_eq!(starts(&dir), 1);
        renderer.render("digraph b {}".into(), "svg", "circo").await.unwrap();
        renderer.render("digraph b {}".into(), "png", "circo").await.unwrap();
        assert_eq!(starts(&dir), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn concurrent_requests_start_one_render() {
        let dir = temp_dir("concurrent");
        let program = fake_dot(&dir, "sleep 0.3; cat");
        let renderer = GraphRenderer::new(program.to_str().unwrap(), Duration::from_secs(20));
        let requests = (0..8).map(|_| renderer.render("digraph c {}".into(), "svg", "circo"));
        for result in futures::future::join_all(requests).await {
            assert_eq!(result.unwrap().bytes, b"digraph c {}");
        }
        assert_eq!(starts(&dir), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_slow_render_is_killed_at_the_limit() {
        let dir = temp_dir("slow");
        // Records its pid, then hangs.
        let program = fake_dot(&dir, &format!("echo $$ > {}\nexec sleep 60", dir.join("pid").display()));
        let renderer = GraphRenderer::new(program.to_str().unwrap(), Duration::from_millis(500));
        let error = renderer.render("digraph d {}".into(), "svg", "circo").await.unwrap_err();
        assert!(matches!(error, RenderError::TimedOut { .. }), "{error:?}");
        let pid = std::fs::read_to_string(dir.join("pid")).unwrap().trim().to_owned();
        // The process is gone (or a zombie about to be reaped), not sleeping on.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = state.split(") ").nth(1).is_some_and(|rest| !rest.starts_with('Z'));
            if !alive {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "dot ({pid}) still runs after the time limit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failing_render_reports_graphviz_errors() {
        let dir = temp_dir("fail");
        let program = fake_dot(&dir, "echo 'Error: syntax error in line 1' >&2; exit 1");
        let renderer = GraphRenderer::new(program.to_str().unwrap(), Duration::from_secs(5));
        let error = renderer.render("digraph {".into(), "svg", "circo").await.unwrap_err();
        assert!(error.to_string().contains("syntax error in line 1"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
