//! Pacing of watch requests: a watch that the API server ends at once must not be restarted at
//! once, forever.
//!
//! kube's watcher restarts a watch that ended without an error immediately, inside one poll of
//! its stream, so the backend cannot slow it down between events. This layer sits under the
//! client instead: a watch request whose previous watch of the same resource started less than
//! [`QUICK_END`] ago waits a jittered exponential backoff first (the backend's
//! [`RetryPolicy`](crate::api::RetryPolicy)). Watches that live (the API server keeps them open
//! for minutes) are never delayed.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use mesh_core::time::Backoff;
use tokio::time::Instant;

/// A watch that ends sooner than this after it started ended "at once".
pub(crate) const QUICK_END: Duration = Duration::from_secs(5);

/// Per watched path: when the last watch started, how many in a row ended at once, and how
/// many watch requests the API server accepted.
#[derive(Debug, Default)]
struct WatchHistory {
    started: Option<Instant>,
    quick_ends: u32,
    established: u64,
}

#[derive(Debug)]
struct PacingState {
    backoff: Backoff,
    paths: BTreeMap<String, WatchHistory>,
}

/// The pacing of one backend's watches, shared by its client and the backend (which sets the
/// backoff).
#[derive(Clone, Debug)]
pub(crate) struct WatchPacing(Arc<Mutex<PacingState>>);

impl WatchPacing {
    /// Pacing with `backoff` between watches that end at once.
    pub(crate) fn new(backoff: Backoff) -> Self {
        WatchPacing(Arc::new(Mutex::new(PacingState { backoff, paths: BTreeMap::new() })))
    }

    /// Sets the backoff between watches that end at once.
    pub(crate) fn set_backoff(&self, backoff: Backoff) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).backoff = backoff;
    }

    /// How many watch requests of `path` (a resource's URL, as [`kube::Api::resource_url`]
    /// gives it) the API server accepted so far: a watch that starts brings no event, but it
    /// shows the API server serves that resource again.
    pub(crate) fn established(&self, path: &str) -> u64 {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.paths.get(path).map_or(0, |history| history.established)
    }

    fn accepted(&self, path: &str) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let history = state.paths.entry(path.to_owned()).or_default();
        history.established = history.established.saturating_add(1);
    }

    /// The wait before a watch of `path` starting `now`, and the start recorded.
    fn wait_before(&self, path: &str, now: Instant) -> Duration {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let backoff = state.backoff;
        let entry = state.paths.entry(path.to_owned()).or_default();
        let wait = match entry.started {
            Some(started) if now.duration_since(started) < QUICK_END => {
                let wait = backoff.jittered(entry.quick_ends, RandomState::new().hash_one(now));
                entry.quick_ends = entry.quick_ends.saturating_add(1);
                wait
            }
            _ => {
                entry.quick_ends = 0;
                Duration::ZERO
            }
        };
        entry.started = Some(now + wait);
        wait
    }
}

/// A [`Client`] whose watch requests are paced (see the [module documentation](self)).
#[derive(Clone)]
pub(crate) struct PacedWatches {
    client: Client,
    pacing: WatchPacing,
}

impl PacedWatches {
    /// `client`, with its watch requests paced by `pacing`.
    pub(crate) fn client(client: Client, pacing: WatchPacing) -> Client {
        let namespace = client.default_namespace().to_owned();
        Client::new(PacedWatches { client, pacing }, namespace)
    }
}

fn is_watch(request: &Request<Body>) -> bool {
    request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"))
}

impl tower_service::Service<Request<Body>> for PacedWatches {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let watched = is_watch(&request).then(|| request.uri().path().to_owned());
        let wait = match &watched {
            Some(path) => self.pacing.wait_before(path, Instant::now()),
            None => Duration::ZERO,
        };
        let client = self.client.clone();
        let pacing = self.pacing.clone();
        Box::pin(async move {
            if !wait.is_zero() {
                tracing::debug!(
                    path = request.uri().path(),
                    ?wait,
                    "the last watch ended at once; waiting before the next"
                );
                tokio::time::sleep(wait).await;
            }
            let response = client.send(request).await;
            if let Some(path) = watched
                && response.as_ref().is_ok_and(|response| response.status().is_success())
            {
                pacing.accepted(&path);
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

    #[test]
    fn watches_that_end_at_once_wait_longer_each_time_and_lived_ones_not_at_all() {
        let paced = WatchPacing::new(BACKOFF);
        let start = Instant::now();
        assert_eq!(paced.wait_before("/api/v1/nodes", start), Duration::ZERO);
        let mut at = start;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let wait = paced.wait_before("/api/v1/nodes", at);
            waits.push(wait);
            at += wait;
        }
        for (failure, wait) in waits.iter().enumerate() {
            let full = BACKOFF.delay(u32::try_from(failure).unwrap());
            assert!(*wait >= full / 2 && *wait <= full, "{failure}: {wait:?} not in [{:?}, {full:?}]", full / 2);
        }
        assert_eq!(paced.wait_before("/apis/kilo.squat.ai/v1alpha1/peers", at), Duration::ZERO, "per resource");
        // A watch that lived for minutes restarts at once, and the backoff starts over.
        at += Duration::from_secs(290);
        assert_eq!(paced.wait_before("/api/v1/nodes", at), Duration::ZERO);
        let next = paced.wait_before("/api/v1/nodes", at + Duration::from_millis(10));
        assert!(next <= Duration::from_secs(1), "{next:?}");
    }
}
