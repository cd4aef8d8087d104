//! Defender credentials and the OAuth2 client-credentials token, cached and refreshed ahead of expiry.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::error::DefenderError;
use crate::secret::Secret;

/// The longest token lifetime believed from the token endpoint (24 h).
const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// The app registration's credentials, as the secret holds them:
/// `{"tenant_id": "...", "client_id": "...", "client_secret": "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The Entra tenant (GUID or domain name) the token is requested from.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The app registration's client secret.
    pub client_secret: Secret<String>,
}

impl Credentials {
    /// Parses the secret's JSON; the error names the problem, never the value.
    pub fn from_json(text: &str) -> Result<Self, DefenderError> {
        let c: Credentials = serde_json::from_str(text).map_err(|e| {
            // serde's message names fields and positions only; the secret is not echoed.
            DefenderError::Credentials(format!(
                "secret is not JSON {{tenant_id, client_id, client_secret}}: {}",
                redact_serde(&e)
            ))
        })?;
        for (name, v) in [
            ("tenant_id", &c.tenant_id),
            ("client_id", &c.client_id),
            ("client_secret", c.client_secret.expose()),
        ] {
            if v.trim().is_empty() {
                return Err(DefenderError::Credentials(format!(
                    "secret field {name} is empty"
                )));
            }
        }
        if !c
            .tenant_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(DefenderError::Credentials(
                "secret field tenant_id must be a GUID or domain name".into(),
            ));
        }
        Ok(c)
    }
}

fn redact_serde(e: &serde_json::Error) -> String {
    // "invalid type: string \"...\"" would quote the value: keep only the category and position.
    let kind = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "malformed JSON",
        serde_json::error::Category::Data => {
            let m = e.to_string();
            if m.starts_with("missing field") || m.starts_with("unknown field") {
                return m;
            }
            "a field has the wrong type"
        }
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Where credentials come from (Secrets Manager in production, a fixed value in tests).
pub trait CredentialSource: Send + Sync {
    /// Reads the credentials: on the first token request, and again when the token endpoint
    /// refuses cached ones (the secret may have been rotated).
    fn fetch(&self) -> impl Future<Output = Result<Credentials, DefenderError>> + Send;
}

/// Credentials known up front.
#[derive(Debug, Clone)]
pub struct StaticCredentials(pub Credentials);

impl CredentialSource for StaticCredentials {
    async fn fetch(&self) -> Result<Credentials, DefenderError> {
        Ok(self.0.clone())
    }
}

/// A bearer token and the generation it belongs to (to drop exactly this one after a 401).
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer value; expose it only for the `Authorization` header.
    pub value: Secret<String>,
    generation: u64,
}

struct Cached {
    value: Secret<String>,
    refresh_at: Instant,
    generation: u64,
}

#[derive(Default)]
struct State {
    credentials: Option<Credentials>,
    token: Option<Cached>,
    generation: u64,
}

/// Gets client-credentials tokens from the login endpoint and caches them until shortly
/// before they expire. Credentials are fetched lazily from `C` and kept.
pub struct TokenProvider<C> {
    source: C,
    http: reqwest::Client,
    login_base: String,
    scope: String,
    state: Mutex<State>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Secret<String>,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl<C: CredentialSource> TokenProvider<C> {
    /// A provider asking `login_base` (a trailing `/` is dropped) for tokens for `scope`
    /// (ending in `/.default`). Nothing is fetched until the first `token()`.
    pub fn new(source: C, http: reqwest::Client, login_base: &str, scope: &str) -> Self {
        Self {
            source,
            http,
            login_base: login_base.trim_end_matches('/').to_string(),
            scope: scope.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// A token valid for a while yet: the cached one, or a new one.
    pub async fn token(&self) -> Result<Token, DefenderError> {
        let mut st = self.state.lock().await;
        if let Some(t) = &st.token
            && Instant::now() < t.refresh_at
        {
            return Ok(Token {
                value: t.value.clone(),
                generation: t.generation,
            });
        }
        let fresh_credentials = st.credentials.is_none();
        let creds = match &st.credentials {
            Some(c) => c.clone(),
            None => self.source.fetch().await?,
        };
        let (value, lifetime) = match self.request_token(&creds).await {
            Err(TokenError::InvalidClient(_)) if !fresh_credentials => {
                // The secret may have been rotated since it was cached: read it again, once.
                tracing::info!("token endpoint refused cached credentials; re-reading the secret");
                let creds = self.source.fetch().await?;
                let got = self
                    .request_token(&creds)
                    .await
                    .map_err(TokenError::into_defender)?;
                st.credentials = Some(creds);
                got
            }
            Err(e) => {
                if fresh_credentials {
                    st.credentials = None;
                }
                return Err(e.into_defender());
            }
            Ok(got) => {
                st.credentials = Some(creds);
                got
            }
        };
        // Refresh ahead of expiry: a fifth of the lifetime, at most five minutes early. Entra issues
        // tokens for at most a day; a longer (or absurd) expires_in is not believed.
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME_SECS);
        let margin = Duration::from_millis((lifetime * 1000 / 5).min(300_000));
        st.generation += 1;
        let generation = st.generation;
        st.token = Some(Cached {
            value: value.clone(),
            refresh_at: Instant::now() + Duration::from_secs(lifetime) - margin,
            generation,
        });
        Ok(Token { value, generation })
    }

    /// Forgets `token` after the API refused it, unless a newer one already replaced it.
    pub async fn invalidate(&self, token: &Token) {
        let mut st = self.state.lock().await;
        if st
            .token
            .as_ref()
            .is_some_and(|t| t.generation == token.generation)
        {
            st.token = None;
        }
    }

    async fn request_token(
        &self,
        creds: &Credentials,
    ) -> Result<(Secret<String>, u64), TokenError> {
        let url = format!("{}/{}/oauth2/v2.0/token", self.login_base, creds.tenant_id);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", creds.client_id.as_str()),
            ("client_secret", creds.client_secret.expose().as_str()),
            ("scope", self.scope.as_str()),
        ];
        let resp = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Other(DefenderError::from_reqwest(e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = super::error::read_body(resp, super::error::MAX_TOKEN_BODY)
            .await
            .map_err(TokenError::Other)?;
        if (200..300).contains(&status) {
            let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                TokenError::Other(DefenderError::InvalidResponse(
                    "token response lacks access_token/expires_in".into(),
                ))
            })?;
            return Ok((t.access_token, t.expires_in));
        }
        let err: OAuthError = serde_json::from_slice(&body).unwrap_or_default();
        match status {
            429 | 500..=599 => Err(TokenError::Other(DefenderError::from_response(
                status,
                retry_after.as_deref(),
                &body,
            ))),
            _ if err.error == "invalid_client" || err.error == "unauthorized_client" => {
                Err(TokenError::InvalidClient(err.error_description))
            }
            _ => Err(TokenError::Other(DefenderError::Credentials(format!(
                "token endpoint answered {status} {}: {}",
                err.error, err.error_description
            )))),
        }
    }
}

enum TokenError {
    InvalidClient(String),
    Other(DefenderError),
}

impl TokenError {
    fn into_defender(self) -> DefenderError {
        match self {
            Self::InvalidClient(d) => {
                DefenderError::Credentials(format!("token endpoint refused the client: {d}"))
            }
            Self::Other(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_errors_name_the_field_not_the_value() {
        let e = Credentials::from_json(r#"{"tenant_id":"t","client_id":"c"}"#).unwrap_err();
        assert!(e.to_string().contains("client_secret"), "{e}");
        let e = Credentials::from_json(r#"{"tenant_id":"t","client_id":"c","client_secret":42}"#)
            .unwrap_err();
        assert!(e.to_string().contains("wrong type"), "{e}");
        let e = Credentials::from_json(r#"{"tenant_id":"t","client_id":"c","client_secret":"  "}"#)
            .unwrap_err();
        assert!(e.to_string().contains("client_secret is empty"), "{e}");
        let e = Credentials::from_json(
            r#"{"tenant_id":"../evil","client_id":"c","client_secret":"TOPSECRET"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("tenant_id") && !e.to_string().contains("TOPSECRET"));
        let e = Credentials::from_json(
            r#"{"tenant_id":"t","client_id":"c","client_secret":"TOPSECRET""#,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("TOPSECRET"), "{e}");
        let c = Credentials::from_json(
            r#"{"tenant_id":"t","client_id":"c","client_secret":"TOPSECRET"}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }
}
