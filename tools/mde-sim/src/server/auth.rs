//! Who is calling: the login service's OAuth token endpoint (client credentials against the
//! configured clients, per tenant) and the bearer check every API call passes, which records the
//! caller for the handler (`client_of`).
//!
//! Separate because it is a service of its own (the login host, with its own error shape) and the
//! one place that knows what a token is.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use time::Duration;

use super::reply::{api_error, json_response, oauth_error};
use super::sim::Sim;
use crate::config::Client;

/// The API client `guarded` authorised for this request: an index into the configured clients.
#[derive(Clone, Copy)]
pub(super) struct ClientIndex(pub(super) usize);

/// The client `guarded` authorised for `req`.
pub(super) fn client_of(req: &Request) -> usize {
    req.extensions().get::<ClientIndex>().map_or(0, |c| c.0)
}

impl Sim {
    /// A 403 unless `client`'s tenant granted it one of `needs` (none needed: any client).
    pub(super) fn permit(&self, client: usize, needs: &[&str]) -> Result<(), Response> {
        if needs.is_empty() {
            return Ok(());
        }
        let st = self.lock();
        let granted = st.clients.get(client).map(|c| &c.roles);
        if granted.is_some_and(|g| needs.iter().any(|n| g.iter().any(|r| r == n))) {
            return Ok(());
        }
        Err(api_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "The application does not have any of the required application permissions ({}) to access the resource",
                needs.join(", ")
            ),
        ))
    }

    /// The client behind the bearer token, or a 401.
    pub(super) fn authorize(&self, headers: &HeaderMap) -> Result<usize, Response> {
        let unauthorized = |message| api_error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("Authorization header with a Bearer token is required"))?;
        let now = self.clock.now();
        match self.lock().tokens.get(token) {
            Some((exp, client)) if *exp > now => Ok(*client),
            Some(_) => Err(unauthorized("The access token has expired")),
            None => Err(unauthorized("The access token is not valid")),
        }
    }
}

/// A token shaped as Entra's (a JWT: header, claims, signature, each base64url), whose claims say
/// what Entra's say and a client reads: the tenant (`tid`), the app (`appid`), the granted
/// application permissions (`roles`), the expiry. The signature is random: the simulator knows its
/// tokens by value, and nothing else may trust them.
fn jwt(client: &Client, exp: time::OffsetDateTime) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let header = b64(json!({"typ": "JWT", "alg": "RS256"}));
    let claims = b64(json!({
        "aud": "https://api.securitycenter.microsoft.com",
        "iss": format!("https://sts.windows.net/{}/", client.tenant_id),
        "tid": client.tenant_id,
        "appid": client.client_id,
        "roles": client.roles,
        "exp": exp.unix_timestamp(),
    }));
    format!("{header}.{claims}.{}", uuid::Uuid::new_v4().simple())
}

/// `POST {login}/{tenant}/oauth2/v2.0/token`: the client credentials grant.
pub(super) async fn token(sim: Arc<Sim>, req: Request) -> Response {
    let tenant = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let form = match axum::Form::<HashMap<String, String>>::from_request(req, &()).await {
        Ok(axum::Form(f)) => f,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("AADSTS900144: the request body must be form-encoded: {e}"),
            );
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: only client_credentials is supported",
        );
    }
    if !form.get("scope").is_some_and(|s| s.ends_with("/.default")) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: the scope must end with /.default",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let secret = form.get("client_secret").cloned().unwrap_or_default();
    let clients = sim.lock().clients.clone();
    let Some(idx) = clients
        .iter()
        .position(|c| c.tenant_id.eq_ignore_ascii_case(&tenant) && c.client_id == client_id)
    else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'"
            ),
        );
    };
    if clients[idx].client_secret != secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided",
        );
    }
    let lifetime = sim.config.sim.token_lifetime_secs;
    // Any lifetime can be configured (a client must survive an absurd expires_in); the token's own
    // expiry stops at ten years.
    let exp = sim.clock.now() + Duration::seconds(lifetime.min(10 * 365 * 86_400) as i64);
    let token = jwt(&clients[idx], exp);
    {
        let mut st = sim.lock();
        st.tokens.insert(token.clone(), (exp, idx));
        st.issued.push(token.clone());
    }
    // expires_in is in real seconds, like Retry-After, so that a client's cache follows the scaled clock.
    let expires_in = (lifetime as f64 / sim.clock.scale()).floor() as u64;
    json_response(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": 0, "access_token": token}),
    )
}
