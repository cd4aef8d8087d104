//! The typed Defender client: one place that adds the token, retries once after a 401, and maps
//! every failure to a [`DefenderError`].

use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tracing::Instrument;

use super::auth::{CredentialSource, TokenProvider};
use super::error::DefenderError;
use super::model::{ActionFilter, ActionId, LiveResponseRequest, MachineAction, MachineId};
use crate::secret::Secret;

/// A result package's pre-signed link. The URL carries a signature, so it is kept secret.
#[derive(Debug, Clone)]
pub struct DownloadLink {
    /// The full link; expose it only to download.
    pub url: Secret<String>,
    /// The link's `se` parameter, when present and readable.
    pub expires_at: Option<OffsetDateTime>,
}

impl DownloadLink {
    /// Wraps a link Defender returned and reads its expiry; an error if it is not a URL.
    pub fn parse(url: String) -> Result<Self, DefenderError> {
        let parsed = url::Url::parse(&url)
            .map_err(|_| DefenderError::InvalidResponse("result link is not a URL".into()))?;
        let expires_at = parsed
            .query_pairs()
            .find(|(k, _)| k == "se")
            .and_then(|(_, v)| {
                OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339).ok()
            });
        Ok(Self {
            url: Secret::new(url),
            expires_at,
        })
    }
}

/// The Defender API client over a credential source `C`: adds the bearer token, refreshes it
/// once after a 401, and maps every failure to a [`DefenderError`].
pub struct DefenderClient<C> {
    http: reqwest::Client,
    api_base: String,
    auth: TokenProvider<C>,
}

/// The HTTP client every Defender call uses: no redirects (a redirect must never carry the bearer
/// token elsewhere), bounded connect and request times.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, DefenderError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .user_agent(concat!(
            "live-response-pipeline/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| DefenderError::Transient {
            reason: format!("cannot build HTTP client: {e}"),
        })
}

impl<C: CredentialSource> DefenderClient<C> {
    /// A client for `api_base` (a trailing `/` is dropped). Build `http` with [`http_client`].
    pub fn new(http: reqwest::Client, api_base: &str, auth: TokenProvider<C>) -> Self {
        Self {
            http,
            api_base: api_base.trim_end_matches('/').to_string(),
            auth,
        }
    }

    /// Sends a request with a bearer token; after a 401 gets a new token and sends it once more.
    pub(super) async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<bytes::Bytes, DefenderError> {
        let mut retried = false;
        loop {
            let token = self.auth.token().await?;
            let resp = build(&self.http)
                .bearer_auth(token.value.expose())
                .send()
                .await
                .map_err(DefenderError::from_reqwest)?;
            let status = resp.status().as_u16();
            if status == 401 && !retried {
                tracing::info!("Defender answered 401; refreshing the token and retrying once");
                self.auth.invalidate(&token).await;
                retried = true;
                continue;
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = super::error::read_body(resp, super::error::MAX_API_BODY).await?;
            if (200..300).contains(&status) {
                return Ok(body);
            }
            let err = DefenderError::from_response(status, retry_after.as_deref(), &body);
            tracing::debug!(status, error = %err, "Defender call failed");
            return Err(err);
        }
    }

    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<T, DefenderError> {
        let body = self.send(build).await?;
        serde_json::from_slice(&body)
            .map_err(|e| DefenderError::InvalidResponse(format!("{what}: {e}")))
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base)
    }

    /// Starts a live response on `machine`; the returned action is usually `Pending`.
    pub async fn run_live_response(
        &self,
        machine: &MachineId,
        request: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        let url = self.url(&format!("/api/machines/{machine}/runliveresponse"));
        let span = tracing::info_span!("defender.run_live_response", machine_id = %machine, commands = request.commands.len());
        self.json("run live response", |h| {
            h.request(Method::POST, &url).json(request)
        })
        .instrument(span)
        .await
    }

    /// The machine action `id` as it stands now. A fresh action may still answer `NotFound`.
    pub async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        let url = self.url(&format!("/api/machineactions/{id}"));
        let span = tracing::info_span!("defender.get_machine_action", action_id = %id);
        self.json("machine action", |h| h.get(&url))
            .instrument(span)
            .await
    }

    /// Machine actions matching `filter`, one page: `top` caps the page (at most 10,000), `skip`
    /// skips that many; `None` leaves each to Defender's default.
    pub async fn list_machine_actions(
        &self,
        filter: &ActionFilter,
        top: Option<u32>,
        skip: Option<u32>,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        #[derive(serde::Deserialize)]
        struct Page {
            value: Vec<MachineAction>,
        }
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(f) = filter.to_odata() {
            query.push(("$filter", f));
        }
        if let Some(t) = top {
            query.push(("$top", t.min(10_000).to_string()));
        }
        if let Some(s) = skip {
            query.push(("$skip", s.to_string()));
        }
        let url = self.url("/api/machineactions");
        let page: Page = self
            .json("machine action list", |h| h.get(&url).query(&query))
            .instrument(tracing::info_span!("defender.list_machine_actions"))
            .await?;
        Ok(page.value)
    }

    /// The download link for command `index` (from 0) of action `id`; links expire, so fetch
    /// one right before downloading.
    pub async fn result_download_link(
        &self,
        id: &ActionId,
        index: u32,
    ) -> Result<DownloadLink, DefenderError> {
        #[derive(serde::Deserialize)]
        struct Value {
            value: String,
        }
        let url = self.url(&format!(
            "/api/machineactions/{id}/GetLiveResponseResultDownloadLink(index={index})"
        ));
        let span = tracing::info_span!("defender.result_download_link", action_id = %id, index);
        let v: Value = self
            .json("result download link", |h| h.get(&url))
            .instrument(span)
            .await?;
        DownloadLink::parse(v.value)
    }

    /// Asks Defender to cancel the action, with `comment` shown in the portal.
    pub async fn cancel_machine_action(
        &self,
        id: &ActionId,
        comment: &str,
    ) -> Result<MachineAction, DefenderError> {
        let url = self.url(&format!("/api/machineactions/{id}/cancel"));
        let body = serde_json::json!({ "Comment": comment });
        let span = tracing::info_span!("defender.cancel", action_id = %id);
        self.json("cancel", |h| h.post(&url).json(&body))
            .instrument(span)
            .await
    }
}
