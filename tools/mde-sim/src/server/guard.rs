//! What stands between a request and its handler: injected faults (429, 500, 503), the bearer
//! token, and the documented limits (submissions per sliding minute, running sessions, calls per
//! minute and per hour to each rate-limited API: status, result link, cancel, library; the
//! running-sessions cap is checked in `actions`, under the lock that creates the session), each refused the way Defender refuses it (429, `Retry-After` in real
//! seconds unless configured away).
//!
//! Separate from the handlers so that every API family is throttled and faulted by the same rules,
//! in the same order, and a handler only sees requests that got through.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, MutexGuard};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use time::{Duration, OffsetDateTime};

use super::auth::ClientIndex;
use super::reply::api_error;
use super::sim::Sim;
use super::state::State;
use crate::limits::SlidingWindow;

/// A handler, boxed so that one `guarded` serves them all.
pub(super) type Handler =
    Box<dyn FnOnce(Arc<Sim>, Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send>;

/// Boxes an async handler into a `Handler`. A handler may answer `Result<Response, Response>`, so
/// that it can pass a refusal up with `?`.
pub(super) fn handler<F, Fut>(f: F) -> Handler
where
    F: FnOnce(Arc<Sim>, Request) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoResponse,
{
    Box::new(move |sim, req| Box::pin(async move { f(sim, req).await.into_response() }))
}

/// Faults, then the bearer token (all but the token endpoint) and its permissions (one of `needs`),
/// then the call budget of `budget_group` (if any), then the handler.
pub(super) async fn guarded(
    sim: &Arc<Sim>,
    fault_key: &str,
    needs: &[&str],
    budget_group: Option<&'static str>,
    req: Request,
    handler: Handler,
) -> Response {
    if let Some(r) = sim.inject(fault_key) {
        return r;
    }
    let mut req = req;
    if fault_key != "token" {
        match sim.authorize(req.headers()) {
            // Handlers read the caller from here rather than checking the token a second time.
            Ok(client) => {
                if let Err(r) = sim.permit(client, needs) {
                    return r;
                }
                req.extensions_mut().insert(ClientIndex(client));
            }
            Err(r) => return r,
        }
    }
    if let Some(group) = budget_group
        && let Err(r) = sim.call_budget(group)
    {
        return r;
    }
    handler(sim.clone(), req).await
}

impl Sim {
    /// A 429, with `Retry-After` (real seconds for `sim_wait`) when `with_header`.
    pub(super) fn retry_after(&self, sim_wait: Duration, with_header: bool) -> Response {
        let mut resp = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests, retry later",
        );
        if with_header {
            let secs = self.clock.real_secs_for(sim_wait);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    /// A 429 because a documented limit was reached; counted under the lock the caller holds.
    pub(super) fn throttle(&self, mut st: MutexGuard<'_, State>, sim_wait: Duration) -> Response {
        st.stats.throttled_by_limit += 1;
        drop(st);
        self.retry_after(sim_wait, self.config.limits.retry_after_header)
    }

    /// Random 429/500/503 for an endpoint, as configured.
    pub(super) fn inject(&self, endpoint: &str) -> Option<Response> {
        let mut st = self.lock();
        let f = st.faults.endpoints.get(endpoint).cloned()?;
        if st.rng.chance(f.p429) {
            st.stats.injected_faults += 1;
            let with_header =
                self.config.limits.retry_after_header && !st.rng.chance(f.p429_without_retry_after);
            drop(st);
            return Some(self.retry_after(Duration::seconds(2), with_header));
        }
        if st.rng.chance(f.p500) {
            st.stats.injected_faults += 1;
            return Some(api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Internal server error (injected)",
            ));
        }
        if st.rng.chance(f.p503) {
            st.stats.injected_faults += 1;
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service unavailable (injected)",
                )
                    .into_response(),
            );
        }
        None
    }

    /// The per-API limits (`gets_per_minute`, `gets_per_hour`: 100 and 1500 by default) for an
    /// endpoint group; a refusal is counted by `throttle` (and as a 429 by `routes`).
    fn call_budget(&self, group: &'static str) -> Result<(), Response> {
        let now = self.clock.now();
        let l = &self.config.limits;
        let mut st = self.lock();
        let (minute, hour) = st.budget_windows.entry(group).or_insert_with(|| {
            (
                SlidingWindow::new(Duration::minutes(1), l.gets_per_minute),
                SlidingWindow::new(Duration::hours(1), l.gets_per_hour),
            )
        });
        let wait = match (minute.wait(now), hour.wait(now)) {
            (None, None) => {
                minute.record(now);
                hour.record(now);
                return Ok(());
            }
            (a, b) => a.max(b).unwrap_or(Duration::SECOND),
        };
        Err(self.throttle(st, wait))
    }

    /// The submission limit (per sliding minute); every call counts toward the busiest-minute stat.
    pub(super) fn submit_budget(&self, now: OffsetDateTime) -> Result<(), Response> {
        let mut st = self.lock();
        st.submit_calls.record(now);
        let seen = st.submit_calls.count(now) as u32;
        st.stats.max_submissions_per_minute = st.stats.max_submissions_per_minute.max(seen);
        if let Some(wait) = st.submit_window.wait(now) {
            return Err(self.throttle(st, wait));
        }
        st.submit_window.record(now);
        Ok(())
    }
}
