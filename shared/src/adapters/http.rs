//! Result links downloaded with reqwest: no redirects followed, a read timeout, a Range request to
//! resume, and the link (which carries its own signature) never logged.

use std::time::Duration;

use crate::ports::{Download, Fetch};
use crate::secret::Secret;

/// The reqwest downloader.
#[derive(Clone)]
pub struct HttpFetch {
    http: reqwest::Client,
}

impl HttpFetch {
    /// A downloader that gives up when no bytes arrive for `timeout`; the error is reqwest's
    /// reason if the client cannot be built.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http })
    }
}

impl Fetch for HttpFetch {
    async fn open(&self, url: &Secret<String>, from: u64) -> Result<Download, String> {
        use futures_util::StreamExt;
        let mut req = self.http.get(url.expose());
        if from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("download failed: {}", e.without_url()))?;
        let status = resp.status().as_u16();
        let expected = if from > 0 { 206 } else { 200 };
        if status != expected {
            let code = resp
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err(format!("download answered HTTP {status} {code}")
                .trim()
                .to_string());
        }
        let content_length = resp.content_length();
        let stream = resp
            .bytes_stream()
            .map(|r| r.map_err(|e| format!("download broke off: {}", e.without_url())));
        Ok(Download {
            content_length,
            stream: Box::pin(stream),
        })
    }
}
