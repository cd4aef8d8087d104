//! Which result links collect follows. A link is attacker-influenced data (it comes back from an API and names a host): it is
//! followed only over https to an allowed host on the default port, before its `se` expiry.

use time::OffsetDateTime;

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
