//! Several Defender tenants behind one listener, as Defender's one API host serves every tenant:
//! each tenant is a `Sim` of its own, and a request goes to the tenant it belongs to before any
//! route sees it. The token endpoint names its tenant in its path; an API call belongs to the
//! tenant that issued its bearer token; a download to the tenant that issued its link. A request
//! that belongs to none goes to the first tenant, which refuses it as Defender would (unknown
//! client, invalid token, unknown link).
//!
//! Separate from `routes` so that a single-tenant simulator is exactly what it was, and the one
//! question this answers (whose request is this) has one home.

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::header;
use axum::response::Response;

use super::routes;
use super::sim::Sim;

/// Every tenant, in the order configured.
pub(super) struct Tenants(pub(super) Vec<Arc<Sim>>);

impl Tenants {
    fn pick(&self, req: &Request) -> Arc<Sim> {
        let segs: Vec<&str> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let found = match segs.as_slice() {
            [login, tenant, ..] if login.eq_ignore_ascii_case("login") => self.0.iter().find(|s| {
                s.lock()
                    .clients
                    .iter()
                    .any(|c| c.tenant_id.eq_ignore_ascii_case(tenant))
            }),
            [blob, .., nonce] if blob.eq_ignore_ascii_case("blob") => {
                self.0.iter().find(|s| s.lock().links.contains_key(*nonce))
            }
            _ => {
                let token = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                token.and_then(|t| self.0.iter().find(|s| s.lock().tokens.contains_key(t)))
            }
        };
        found.unwrap_or(&self.0[0]).clone()
    }
}

/// Hands `req` to the routes of the tenant it belongs to.
pub(super) async fn dispatch(AxState(tenants): AxState<Arc<Tenants>>, req: Request) -> Response {
    let sim = tenants.pick(&req);
    routes::dispatch(AxState(sim), req).await
}
