//! What went wrong talking to Defender, phrased as what the caller should do next.

use std::time::Duration;

/// What a caller does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again later; `Some` when Defender said how long to wait.
    RetryAfter(Option<Duration>),
    /// Nothing will change by retrying: record the failure.
    GiveUp,
}

/// A failed Defender call, classified by what the caller should do: see [`DefenderError::next`].
#[derive(Debug, thiserror::Error)]
pub enum DefenderError {
    /// 429: a documented limit was hit.
    #[error("Defender rate limit hit (retry after {retry_after:?})")]
    RateLimited {
        /// The `Retry-After` wait; `None` if absent or not in seconds.
        retry_after: Option<Duration>,
    },
    /// 400 ActiveRequestAlreadyExists: the device already has a live response session.
    #[error("device busy: {message}")]
    DeviceBusy {
        /// Defender's message.
        message: String,
    },
    /// 404: the machine or action does not exist (or not yet: actions can 404 right after creation).
    #[error("not found ({code}): {message}")]
    NotFound {
        /// Defender's error code; empty if the body had none.
        code: String,
        /// Defender's message, or the start of the raw body.
        message: String,
    },
    /// 401/403 after a fresh token: the app's permissions or credentials are wrong.
    #[error("unauthorized ({status}): {message}")]
    Unauthorized {
        /// The HTTP status, 401 or 403.
        status: u16,
        /// Defender's message, or the start of the raw body.
        message: String,
    },
    /// 5xx, timeouts and connection errors: worth retrying.
    #[error("transient failure: {reason}")]
    Transient {
        /// What failed (status and message, or the kind of network error), without URLs.
        reason: String,
    },
    /// Any other 4xx, with Defender's code and message: the request itself is wrong.
    #[error("rejected ({status} {code}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// Defender's error code; empty if the body had none.
        code: String,
        /// Defender's message, or the start of the raw body.
        message: String,
    },
    /// The credentials secret is missing, unreadable or malformed.
    #[error("Defender credentials unavailable: {0}")]
    Credentials(String),
    /// A 2xx whose body is not what the API documents.
    #[error("unexpected response from Defender: {0}")]
    InvalidResponse(String),
}

/// The largest body read from Defender's API: a page of 1,000 machine actions or a full library
/// listing is well under it.
pub const MAX_API_BODY: usize = 16 << 20;
/// The largest body read from the token endpoint.
pub const MAX_TOKEN_BODY: usize = 64 << 10;

/// A response's body, read up to `max` bytes: a server (or anything on the path) that sends more
/// is refused before it can fill the function's memory.
pub async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<bytes::Bytes, DefenderError> {
    let too_large =
        || DefenderError::InvalidResponse(format!("response body larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(DefenderError::from_reqwest)? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

impl DefenderError {
    /// Retry (rate limits, a busy device, transient failures) or give up (everything else).
    pub fn next(&self) -> Next {
        match self {
            Self::RateLimited { retry_after } => Next::RetryAfter(*retry_after),
            Self::DeviceBusy { .. } | Self::Transient { .. } => Next::RetryAfter(None),
            Self::NotFound { .. }
            | Self::Unauthorized { .. }
            | Self::Rejected { .. }
            | Self::Credentials(_)
            | Self::InvalidResponse(_) => Next::GiveUp,
        }
    }

    /// Maps a non-2xx response: status, `Retry-After` header, and the `{"error":{code,message}}` body.
    pub fn from_response(status: u16, retry_after: Option<&str>, body: &[u8]) -> Self {
        use crate::text::cut;
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<Envelope>(body) {
            // Kept short whatever Defender sends: the message becomes a run's reason, in its
            // manifest and completion event.
            Ok(e) => (cut(&e.error.code, 128), cut(&e.error.message, 512)),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            ),
        };
        match status {
            429 => Self::RateLimited {
                retry_after: retry_after.and_then(parse_retry_after),
            },
            400 if code == "ActiveRequestAlreadyExists" => Self::DeviceBusy { message },
            404 => Self::NotFound { code, message },
            401 | 403 => Self::Unauthorized { status, message },
            500..=599 => Self::Transient {
                reason: format!("HTTP {status} {code} {message}").trim().to_string(),
            },
            _ => Self::Rejected {
                status,
                code,
                message,
            },
        }
    }

    /// A network-level failure (timeout, connection, broken body) as `Transient`; the URL is
    /// dropped because result links carry signatures.
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        // The URL is left out: result links carry signatures.
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "response body broken off"
        } else {
            "request failed"
        };
        Self::Transient {
            reason: format!("{kind}: {}", e.without_url()),
        }
    }
}

/// `Retry-After` in delta-seconds (what Defender sends). An HTTP date is not expected and is ignored.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"error": {"code": code, "message": message, "target": "t"}}),
        )
        .unwrap()
    }

    #[test]
    fn maps_each_class() {
        let e = DefenderError::from_response(429, Some("17"), &body("TooManyRequests", "x"));
        assert_eq!(e.next(), Next::RetryAfter(Some(Duration::from_secs(17))));
        let e = DefenderError::from_response(429, None, b"");
        assert_eq!(e.next(), Next::RetryAfter(None));
        let e = DefenderError::from_response(
            400,
            None,
            &body(
                "ActiveRequestAlreadyExists",
                "Action is already in progress",
            ),
        );
        assert!(matches!(e, DefenderError::DeviceBusy { .. }));
        assert_eq!(e.next(), Next::RetryAfter(None));
        let e = DefenderError::from_response(
            404,
            None,
            &body("ResourceNotFound", "Machine 1 was not found"),
        );
        assert!(
            matches!(e, DefenderError::NotFound { ref code, .. } if code == "ResourceNotFound")
        );
        let e = DefenderError::from_response(403, None, &body("Forbidden", "no"));
        assert!(matches!(e, DefenderError::Unauthorized { status: 403, .. }));
        let e = DefenderError::from_response(503, None, b"Service unavailable");
        assert!(matches!(e, DefenderError::Transient { .. }));
        let e = DefenderError::from_response(400, None, &body("InvalidRequestBody", "bad"));
        assert!(
            matches!(e, DefenderError::Rejected { status: 400, ref code, ref message } if code == "InvalidRequestBody" && message == "bad")
        );
        assert_eq!(e.next(), Next::GiveUp);
    }

    #[test]
    fn retry_after_parses_delta_seconds_only() {
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-3"), None);
    }
}
