//! Which result links collect follows, and asking Defender for a fresh one when a download breaks
//! off. A link is attacker-influenced data (it comes back from an API and names a host): it is
//! followed only over https to an allowed host on the default port, before its `se` expiry.

use std::time::Duration;

use time::OffsetDateTime;

use super::copy::CopyError;
use crate::budget::{self, Paced};
use crate::clock::Clock;
use crate::messages::CollectJob;
use crate::ports::{Defender, Fetch, ObjectStore};
use crate::stages::settings::CollectConfig;

/// A result link is followed only over https to an allowed host (plain http only to an allowed
/// loopback host, which is how the local simulator serves), and only before its `se` expiry.
pub fn check_link(url: &str, allowed_hosts: &[String], now: OffsetDateTime) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|_| "the result link is not a URL".to_string())?;
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("the result link to {host} carries credentials"));
    }

    let allowed = allowed_hosts.iter().any(|a| match a.strip_prefix('.') {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == *a,
    });
    if !allowed {
        return Err(format!(
            "the result link points at {host}, which is not an allowed download host"
        ));
    }
    let loopback = host
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(host == "localhost");
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        s => return Err(format!("the result link uses {s}; only https is followed")),
    }
    // Only the default port (an allowed host on another port reaches whatever listens there);
    // a loopback host, which is how the local simulator serves, may name its port.
    if let Some(port) = u.port()
        && !loopback
    {
        return Err(format!(
            "the result link to {host} names port {port}; only the default port is followed"
        ));
    }
    let se = u
        .query_pairs()
        .find(|(k, _)| k == "se")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "the result link has no se (expiry)".to_string())?;
    let expiry = OffsetDateTime::parse(&se, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("the result link's se {se:?} is not a time"))?;
    if expiry <= now {
        return Err(format!("the result link expired at {se}"));
    }
    Ok(())
}

/// Where the package comes from; asked again for a fresh link when a download breaks off.
pub(super) struct Source<'a, S, D, F> {
    pub(super) store: &'a S,
    pub(super) defender: &'a D,
    pub(super) fetch: &'a F,
    pub(super) cfg: &'a CollectConfig,
    pub(super) clock: &'a dyn Clock,
    pub(super) job: &'a CollectJob,
}

impl<S: ObjectStore, D: Defender, F: Fetch> Source<'_, S, D, F> {
    /// A fresh link, checked like the first, opened at byte `from`.
    pub(super) async fn reopen(&self, from: u64) -> Result<crate::ports::Download, CopyError> {
        // The link call counts against the GET budget; mid-copy, wait for it here (briefly).
        let mut waited = Duration::ZERO;
        let link = loop {
            let call = budget::get_call(self.store, &self.cfg.budget, self.clock, || {
                self.defender
                    .result_download_link(&self.job.action_id, self.job.index)
            })
            .await
            .map_err(CopyError::Store)?;
            match call {
                Paced::Ran(link) => break link,
                Paced::Wait(w) => {
                    waited += w;
                    if waited > Duration::from_secs(60) {
                        return Err(CopyError::Download(
                            "GET budget exhausted while resuming".into(),
                        ));
                    }
                    tokio::time::sleep(w).await;
                }
            }
        }
        .map_err(|e| CopyError::Download(format!("asking for a fresh link: {e}")))?;
        check_link(link.url.expose(), &self.cfg.allowed_hosts, self.clock.now())
            .map_err(CopyError::Download)?;
        self.fetch
            .open(&link.url, from)
            .await
            .map_err(CopyError::Download)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_be_https_to_allowed_hosts_and_unexpired() {
        let allowed = vec![
            ".blob.core.windows.net".to_string(),
            "127.0.0.1".to_string(),
        ];
        let now = OffsetDateTime::parse(
            "2026-01-01T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ok = "https://acct.blob.core.windows.net/c/x?se=2026-01-01T00%3A30%3A00Z&sig=abc";
        assert!(check_link(ok, &allowed, now).is_ok());
        assert!(
            check_link(
                "http://127.0.0.1:9/blob/x?se=2026-01-01T00%3A30%3A00Z",
                &allowed,
                now
            )
            .is_ok()
        );
        for (bad, why) in [
            (
                "http://acct.blob.core.windows.net/c/x?se=2026-01-01T00%3A30%3A00Z",
                "only https",
            ),
            (
                "https://blob.core.windows.net.evil.com/x?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
            (
                "https://evilblob.core.windows.net/x?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
            (
                "https://169.254.169.254/latest/meta-data?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
            (
                "https://u:p@acct.blob.core.windows.net/x?se=2026-01-01T00%3A30%3A00Z",
                "credentials",
            ),
            ("https://acct.blob.core.windows.net/x", "no se"),
            (
                "https://acct.blob.core.windows.net/x?se=2025-12-31T23%3A59%3A00Z",
                "expired",
            ),
            (
                "https://acct.blob.core.windows.net/x?se=tomorrow",
                "not a time",
            ),
            ("file:///etc/passwd", "not an allowed"),
            (
                "https://acct.blob.core.windows.net:6379/x?se=2026-01-01T00%3A30%3A00Z",
                "port 6379",
            ),
            (
                "http://localhost:80/x?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
        ] {
            let e = check_link(bad, &allowed, now).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
