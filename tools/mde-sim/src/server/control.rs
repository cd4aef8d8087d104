//! The simulator's own `/sim/*` endpoints (no auth, not part of Defender): `GET stats`, `GET time`,
//! `GET actions`, `POST advance {"seconds": N}`, `POST reset`, `PUT faults` (the `[faults]` table
//! as JSON). They do over HTTP what `SimServer`'s methods do in process.
//!
//! Separate so that nothing a test harness can do to the simulator is mixed with what Defender
//! does.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::Duration;

use super::reply::{api_error, bad_request, json_response};
use super::sim::Sim;
use crate::clock::format_ts;
use crate::config::Faults;

/// A control request's body (up to 64 KiB; empty when unreadable).
async fn body(req: Request) -> bytes::Bytes {
    axum::body::to_bytes(req.into_body(), 1 << 16)
        .await
        .unwrap_or_default()
}

/// `/sim/{rest}`, `rest` in lower case.
pub(super) async fn control(sim: &Arc<Sim>, req: Request, rest: &[&str]) -> Response {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, ["stats"]) => {
            let stats = sim.lock().stats.clone();
            json_response(
                StatusCode::OK,
                serde_json::to_value(stats).unwrap_or_default(),
            )
        }
        (&Method::GET, ["time"]) => json_response(
            StatusCode::OK,
            json!({"now": format_ts(sim.clock.now()), "scale": sim.clock.scale()}),
        ),
        (&Method::GET, ["actions"]) => {
            json_response(StatusCode::OK, json!({"value": sim.action_entities()}))
        }
        (&Method::POST, ["advance"]) => {
            let body = body(req).await;
            let secs = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("seconds").and_then(Value::as_f64));
            match secs {
                Some(s) if s >= 0.0 && s.is_finite() => {
                    sim.clock.advance(Duration::seconds_f64(s));
                    json_response(StatusCode::OK, json!({"now": format_ts(sim.clock.now())}))
                }
                _ => bad_request(
                    "InvalidInput",
                    "body must be {\"seconds\": <non-negative number>}",
                ),
            }
        }
        (&Method::POST, ["reset"]) => {
            sim.reset();
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::PUT, ["faults"]) => match serde_json::from_slice::<Faults>(&body(req).await) {
            Ok(f) => {
                sim.lock().set_faults(f);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad_request("InvalidInput", &format!("faults: {e}")),
        },
        _ => api_error(StatusCode::NOT_FOUND, "NotFound", "unknown /sim endpoint"),
    }
}
