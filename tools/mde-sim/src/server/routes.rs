//! The route table: which handler serves a method and path (case-insensitive, percent-decoded, as
//! Defender's paths are), through which fault key and call budget, and the per-endpoint call count
//! every response adds to `Stats::calls`.
//!
//! Separate so that the whole API surface can be read in one place, and the names endpoints go by
//! (in `Stats`, in `[faults.endpoints]`) are given in one place.

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::actions::{cancel, get_action, list_actions, result_link, submit};
use super::auth::token;
use super::blob::blob;
use super::control::control;
use super::guard::{Handler, guarded, handler};
use super::library::{library_delete, library_list, library_upload};
use super::reply::api_error;
use super::sim::Sim;

enum Route {
    /// A login or API call: faults under `fault_key`, then the bearer (not for the token
    /// endpoint), then the call budget of `budget_group` (per minute and per hour, shared by the
    /// group's endpoints), then the handler.
    Api {
        endpoint: &'static str,
        fault_key: &'static str,
        budget_group: Option<&'static str>,
        handler: Handler,
    },

    Blob,
    Control,
    Unknown,
}

/// The application permissions each endpoint takes, any one of them (Defender's API pages): a live
/// response and its results need `Machine.LiveResponse`; reading machine actions
/// `Machine.Read.All` (or `Machine.ReadWrite.All`); cancelling any machine-action permission; the
/// library `Library.Manage`.
fn needs(endpoint: &str) -> &'static [&'static str] {
    match endpoint {
        "submit" | "link" => &["Machine.LiveResponse"],
        "list_actions" | "get_action" => &["Machine.Read.All", "Machine.ReadWrite.All"],
        "cancel" => &[
            "Machine.CollectForensics",
            "Machine.Isolate",
            "Machine.RestrictExecution",
            "Machine.Scan",
            "Machine.Offboard",
            "Machine.StopAndQuarantine",
            "Machine.LiveResponse",
        ],
        "library_list" | "library_upload" | "library_delete" => &["Library.Manage"],
        _ => &[],
    }
}

fn api(
    endpoint: &'static str,
    fault_key: &'static str,
    budget_group: Option<&'static str>,
    handler: Handler,
) -> Route {
    Route::Api {
        endpoint,
        fault_key,
        budget_group,
        handler,
    }
}

pub(super) async fn dispatch(AxState(sim): AxState<Arc<Sim>>, req: Request) -> Response {
    let method = req.method().clone();
    let segs: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    // The id (or name) in the third segment, as sent.
    let arg = || segs[2].clone();
    let route = match (&method, l.as_slice()) {
        (&Method::POST, ["login", _, "oauth2", "v2.0", "token"]) => {
            api("token", "token", None, handler(token))
        }
        (&Method::POST, ["api", "machines", _, "runliveresponse"]) => {
            let id = arg();
            api(
                "submit",
                "submit",
                None,
                handler(move |s, r| submit(s, r, id)),
            )
        }
        (&Method::GET, ["api", "machineactions"]) => api(
            "list_actions",
            "list_actions",
            Some("status"),
            handler(list_actions),
        ),
        (&Method::GET, ["api", "machineactions", _]) => {
            let id = arg();
            api(
                "get_action",
                "get_action",
                Some("status"),
                handler(move |s, _| get_action(s, id)),
            )
        }
        (&Method::GET, ["api", "machineactions", _, link])
            if link.starts_with("getliveresponseresultdownloadlink(") =>
        {
            let (id, call) = (arg(), segs[3].clone());
            api(
                "link",
                "link",
                Some("link"),
                handler(move |s, _| result_link(s, id, call)),
            )
        }
        (&Method::POST, ["api", "machineactions", _, "cancel"]) => {
            let id = arg();
            api(
                "cancel",
                "cancel",
                Some("cancel"),
                handler(move |s, r| cancel(s, r, id)),
            )
        }
        // List, upload and delete share one budget, as the library API documents its limits.
        (&Method::GET, ["api", "libraryfiles"]) => api(
            "library_list",
            "library",
            Some("library"),
            handler(|s, _| library_list(s)),
        ),
        (&Method::POST, ["api", "libraryfiles"]) => api(
            "library_upload",
            "library",
            Some("library"),
            handler(library_upload),
        ),
        (&Method::DELETE, ["api", "libraryfiles", _]) => {
            let name = arg();
            api(
                "library_delete",
                "library",
                Some("library"),
                handler(move |s, _| library_delete(s, name)),
            )
        }
        (&Method::GET | &Method::HEAD, ["blob", ..]) => Route::Blob,
        (_, ["sim", ..]) => Route::Control,
        _ => Route::Unknown,
    };
    let (endpoint, resp) = match route {
        Route::Api {
            endpoint,
            fault_key,
            budget_group,
            handler,
        } => (
            endpoint,
            guarded(&sim, fault_key, needs(endpoint), budget_group, req, handler).await,
        ),
        Route::Blob => {
            let r = match sim.inject("blob") {
                Some(r) => r,
                None => blob(&sim, req).await,
            };
            ("blob", r)
        }
        Route::Control => ("sim", control(&sim, req, &l[1..]).await),
        Route::Unknown => (
            "unknown",
            api_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("No route for {method} {}", segs.join("/")),
            ),
        ),
    };
    let status = resp.status();
    let mut st = sim.lock();
    *st.stats
        .calls
        .entry(endpoint.to_string())
        .or_default()
        .entry(status.as_u16().to_string())
        .or_default() += 1;
    if status == StatusCode::TOO_MANY_REQUESTS {
        st.stats.throttled += 1;
    }
    resp
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
