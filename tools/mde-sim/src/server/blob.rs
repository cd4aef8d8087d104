//! The blob host: result links (an Azure Storage SAS-style URL with `se`, `sp=r`, `sv`, `sr=b` and
//! an HMAC `sig`), how they are issued and checked, and the download itself: a transcript or a
//! GetFile package (gzip, built on the fly), whole or by `Range`, `HEAD`, and injected cuts and
//! early expiry. Errors are Azure Storage's XML, not the API's JSON.
//!
//! Separate because it is another host in Defender (no bearer token, its own error shape) and the
//! one place that knows the link format, so that issuing and checking a link cannot drift apart.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

use super::reply::{azure_error, query_of};
use super::sim::Sim;
use super::state::{Link, State};
use crate::action::ResultBody;
use crate::clock::format_se;
use crate::content::GzipPackage;

const BLOB_CONTAINER: &str = "investigation-actions-data";
/// The storage service version a link is signed for (`sv`).
const SAS_VERSION: &str = "2019-07-07";
const CHUNK: usize = 256 * 1024;

impl Sim {
    fn sign(&self, path: &str, se: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{path}\n{se}\nr\n{SAS_VERSION}\nb").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// A new signed link to command `index` of an action, valid for the configured lifetime
    /// (unless chosen to expire early).
    pub(super) fn issue_link(
        &self,
        st: &mut State,
        action_id: String,
        index: usize,
        now: OffsetDateTime,
    ) -> String {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let path =
            format!("/blob/{BLOB_CONTAINER}/{action_id}/CustomPlaybookCommandOutput/{nonce}");
        let se = format_se(now + Duration::seconds(self.config.sim.link_lifetime_secs as i64));
        let sig = self.sign(&path, &se);
        let early = st.faults.link_early_expiry_probability;
        let dies_at = if st.rng.chance(early) {
            st.stats.injected_faults += 1;
            Some(now + Duration::seconds(st.faults.link_early_expiry_secs as i64))
        } else {
            None
        };
        st.links.insert(
            nonce,
            Link {
                action_id,
                index,
                dies_at,
            },
        );
        st.stats.links_issued += 1;
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "{}{}?se={}&sp=r&sv={SAS_VERSION}&sr=b&sig={}",
            self.api_base,
            path,
            enc(&se),
            enc(&sig)
        )
    }
}

fn auth_failed(message: &str) -> Response {
    azure_error(StatusCode::FORBIDDEN, "AuthenticationFailed", message)
}

fn blob_not_found() -> Response {
    azure_error(
        StatusCode::NOT_FOUND,
        "BlobNotFound",
        "The specified blob does not exist.",
    )
}

enum Package {
    Bytes(bytes::Bytes),
    Gzip(GzipPackage),
}

impl Package {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Gzip(g) => g.len(),
        }
    }
}

/// Parses a single `Range: bytes=...` against a body of `len` bytes into an inclusive range.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: answer the whole body, as a server may
    }
    let (a, b) = spec.split_once('-')?;
    let r = if a.is_empty() {
        let n: u64 = b.trim().parse().ok()?;
        if n == 0 || len == 0 {
            Err(())
        } else {
            Ok((len.saturating_sub(n), len - 1))
        }
    } else {
        let start: u64 = a.trim().parse().ok()?;
        let end: u64 = if b.trim().is_empty() {
            len.saturating_sub(1)
        } else {
            b.trim().parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            Err(())
        } else {
            Ok((start, end))
        }
    };
    Some(r)
}

/// The link's nonce and expiry, once its parameters and signature check out.
fn verify(sim: &Sim, req: &Request) -> Result<(String, OffsetDateTime), Response> {
    let path = req.uri().path().to_string();
    let query = query_of(req);
    let nonce = path.rsplit('/').next().unwrap_or_default().to_string();
    let (Some(se), Some(sig)) = (query.get("se"), query.get("sig")) else {
        return Err(auth_failed(
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        ));
    };
    let ok_params = query.get("sp").map(String::as_str) == Some("r")
        && query.get("sv").map(String::as_str) == Some(SAS_VERSION)
        && query.get("sr").map(String::as_str) == Some("b");
    if !ok_params || sim.sign(&path, se) != *sig {
        return Err(auth_failed(
            "Server failed to authenticate the request. Signature did not match.",
        ));
    }
    let expiry = OffsetDateTime::parse(se, &time::format_description::well_known::Rfc3339)
        .map_err(|_| auth_failed("Signed expiry time is not valid."))?;
    Ok((nonce, expiry))
}

/// What the link opens, and where (if anywhere) the download is to be cut.
async fn open(
    sim: &Sim,
    nonce: &str,
    expiry: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(Package, Option<u64>), Response> {
    let (package, cut) = {
        let mut st = sim.lock();
        let link = st.links.get(nonce).ok_or_else(blob_not_found)?;
        if now >= expiry || link.dies_at.is_some_and(|d| now >= d) {
            return Err(auth_failed(
                "Server failed to authenticate the request. Signed expiry time must be after the current time.",
            ));
        }
        let body = st
            .find_action(&link.action_id)
            .and_then(|a| a.commands.get(link.index))
            .ok_or_else(blob_not_found)?
            .result
            .clone();
        let p = st.faults.download_cut_probability;
        let cut = if st.rng.chance(p) {
            st.stats.injected_faults += 1;
            st.stats.downloads_cut += 1;
            Some(st.faults.download_cut_after_bytes)
        } else {
            None
        };
        let package = match body {
            Some(ResultBody::Transcript(b)) => Ok(Package::Bytes(b)),
            Some(ResultBody::File(f)) => match st.crc_cache.get(&f) {
                Some(crc) => Ok(Package::Gzip(GzipPackage {
                    file: f,
                    crc32: *crc,
                })),
                None => Err(f),
            },
            None => return Err(blob_not_found()),
        };
        (package, cut)
    };
    let package = match package {
        Ok(p) => p,
        Err(f) => {
            // The trailer needs the whole file's CRC: one pass, off the async threads, then cached.
            let crc = tokio::task::spawn_blocking(move || f.crc32())
                .await
                .unwrap_or(0);
            sim.lock().crc_cache.insert(f, crc);
            Package::Gzip(GzipPackage {
                file: f,
                crc32: crc,
            })
        }
    };
    Ok((package, cut))
}

/// `GET` or `HEAD` of a result link.
pub(super) async fn blob(sim: &Arc<Sim>, req: Request) -> Response {
    let now = sim.clock.now();
    if req.headers().contains_key(header::AUTHORIZATION) {
        sim.lock().stats.blob_requests_with_authorization += 1;
    }
    let (package, cut) = match verify(sim, &req) {
        Ok((nonce, expiry)) => match open(sim, &nonce, expiry, now).await {
            Ok(opened) => opened,
            Err(r) => return r,
        },
        Err(r) => return r,
    };
    let len = package.len();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((a, b))) => {
            sim.lock().stats.blob_range_starts.push(a);
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
        Some(Err(())) => {
            let mut r = azure_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The range specified is invalid for the current size of the resource.",
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            return r;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"0x{:016X}\"", len ^ 0x5eed))
            .unwrap_or(HeaderValue::from_static("\"0\"")),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
                .unwrap_or(HeaderValue::from_static("bytes */0")),
        );
    }
    if req.method() == Method::HEAD {
        return (status, headers).into_response();
    }
    let stop = cut.map(|n| (start + n).min(end)).unwrap_or(end);
    (status, headers, stream(sim, package, start, stop, end)).into_response()
}

/// The body from `start`, in chunks, counted in `Stats`; broken off at `stop` when that is before
/// `end` (an injected cut).
fn stream(sim: &Arc<Sim>, package: Package, start: u64, stop: u64, end: u64) -> Body {
    let sim = sim.clone();
    let chunks = futures_util::stream::unfold((start, package), move |(pos, package)| {
        let sim = sim.clone();
        async move {
            if pos >= stop {
                if stop < end {
                    // Let what was sent so far reach the client first, then break off.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    // An error mid-body makes the server drop the connection: a cut download.
                    return Some((
                        Err(std::io::Error::other("download cut (injected)")),
                        (end, package),
                    ));
                }
                return None;
            }
            let n = ((stop - pos) as usize).min(CHUNK);
            let chunk = match &package {
                Package::Bytes(b) => b.slice(pos as usize..pos as usize + n),
                Package::Gzip(g) => {
                    let mut buf = vec![0u8; n];
                    let w = g.fill(pos, &mut buf);
                    buf.truncate(w);
                    bytes::Bytes::from(buf)
                }
            };
            sim.lock().stats.blob_bytes_sent += chunk.len() as u64;
            let next = pos + chunk.len() as u64;
            Some((Ok::<_, std::io::Error>(chunk), (next, package)))
        }
    });
    Body::from_stream(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-200", 100), Some(Ok((5, 99))));
        assert_eq!(parse_range("items=1-2", 100), None);
    }
}
