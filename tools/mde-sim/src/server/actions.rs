//! Machine actions over the API: `runliveresponse` (submit), get, list (with `$filter`, `$top`,
//! `$skip`), cancel, and `GetLiveResponseResultDownloadLink` (a result link for a completed
//! command). What an action does over time is `crate::action`; this module is how the API shows
//! and changes it.
//!
//! Separate from `library` and `blob`: these are the calls a pipeline polls, each with its own call
//! budget group, and the rules that make a session (one per device, the running-sessions cap).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::auth::client_of;
use super::commands::parse_commands;
use super::filter::{matches, parse_filter};
use super::reply::{bad_request, json_body, json_response, not_found, query_of};
use super::sim::Sim;
use super::state::State;
use crate::action::{
    Action, Cancellation, CommandStatus, CommandType, OnDevice, Status, Submission,
};

fn action_not_found(id: &str) -> Response {
    not_found(&format!("Machine action {id} was not found"))
}

/// Whether a new action still answers 404 (the injected `not_found_after_create_secs`).
fn sim_not_found(st: &State, a: &Action, now: OffsetDateTime) -> bool {
    let secs = st.faults.not_found_after_create_secs;
    secs > 0 && now < a.created + Duration::seconds(secs as i64)
}

/// `POST /api/machines/{id}/runliveresponse`.
pub(super) async fn submit(
    sim: Arc<Sim>,
    req: Request,
    machine_id: String,
) -> Result<Response, Response> {
    let now = sim.clock.now();
    let client = client_of(&req);
    sim.submit_budget(now)?;
    let body = json_body(req, 1 << 20).await?;
    let (commands, comment) = parse_commands(&body)?;
    let machine_not_found = || not_found(&format!("Machine {machine_id} was not found"));
    if machine_id.len() != 40 || !machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(machine_not_found());
    }
    let device = sim
        .config
        .device(&machine_id)
        .ok_or_else(machine_not_found)?;
    let mut st = sim.lock();
    let busy = st
        .actions
        .iter()
        .any(|a| a.machine_id.eq_ignore_ascii_case(&machine_id) && !a.status(now).is_final());
    if busy {
        return Err(bad_request(
            "ActiveRequestAlreadyExists",
            "Action is already in progress",
        ));
    }
    let running = st.running_sessions(now);
    if running >= sim.config.limits.running_sessions as usize {
        // A session slot frees when the earliest running session ends; a rough hint is enough.
        return Err(sim.throttle(st, Duration::seconds(30)));
    }
    let requestor = sim.requestor(client);
    // The library as it is now: a later upload or delete does not change this session.
    let state = &mut *st;
    let library = |n: &str| {
        state
            .library
            .get(&n.to_ascii_lowercase())
            .map(|(_, f)| f.sha256.clone())
    };
    let mut on_device = OnDevice {
        folders: &mut state.folders,
        corrupt_part: state.faults.large_file_corrupt_part,
        cleanup_fails: state.faults.large_file_cleanup_fails,
    };
    let action = Action::plan(
        Submission {
            id: uuid::Uuid::new_v4().to_string(),
            requestor,
            comment,
            commands,
            created: now,
        },
        device,
        &sim.config,
        sim.clock.start(),
        &library,
        &mut on_device,
    );
    let body = action.to_json(now, &sim.api_base);
    let slot = st.actions.len();
    st.by_id.insert(action.id.clone(), slot);
    st.actions.push(action);
    st.stats.actions_created += 1;
    st.stats.max_concurrent_sessions = st.stats.max_concurrent_sessions.max(running as u32 + 1);
    Ok(json_response(StatusCode::CREATED, body))
}

/// `GET /api/machineactions/{id}`.
pub(super) async fn get_action(sim: Arc<Sim>, id: String) -> Response {
    let now = sim.clock.now();
    let st = sim.lock();
    match st.find_action(&id) {
        Some(a) if !sim_not_found(&st, a, now) => {
            json_response(StatusCode::OK, a.to_json(now, &sim.api_base))
        }
        _ => action_not_found(&id),
    }
}

/// `GET /api/machineactions`, with `$filter`, `$top` (at most 10000) and `$skip`.
pub(super) async fn list_actions(sim: Arc<Sim>, req: Request) -> Result<Response, Response> {
    let now = sim.clock.now();
    let query = query_of(&req);
    let get = |k: &str| {
        query
            .iter()
            .find(|(q, _)| q.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let filter = get("$filter")
        .map(|f| parse_filter(&f))
        .transpose()
        .map_err(|e| bad_request("InvalidInput", &format!("$filter: {e}")))?;
    let number = |k: &str, default: usize| -> Result<usize, Response> {
        match get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| bad_request("InvalidInput", &format!("{k} must be a whole number"))),
        }
    };
    let top = number("$top", 10_000)?;
    if top > 10_000 {
        return Err(bad_request("InvalidInput", "$top is at most 10000"));
    }
    let skip = number("$skip", 0)?;
    let st = sim.lock();
    let values: Vec<Value> = st
        .actions
        .iter()
        .map(|a| a.entity(now))
        .filter(|v| filter.as_ref().is_none_or(|f| matches(f, v)))
        .skip(skip)
        .take(top)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/api/$metadata#MachineActions", sim.api_base), "value": values}),
    ))
}

/// `GET /api/machineactions/{id}/GetLiveResponseResultDownloadLink(index={n})`: `call` is the
/// last path segment as sent.
pub(super) async fn result_link(
    sim: Arc<Sim>,
    id: String,
    call: String,
) -> Result<Response, Response> {
    let now = sim.clock.now();
    let index = call
        .find('(')
        .and_then(|p| call[p + 1..].strip_suffix(')'))
        .and_then(|inner| {
            let inner = inner.trim();
            let v = inner
                .strip_prefix("index=")
                .or_else(|| inner.strip_prefix("Index="))
                .unwrap_or(inner);
            v.trim().parse::<usize>().ok()
        })
        .ok_or_else(|| bad_request("InvalidInput", "index must be a whole number: (index={n})"))?;
    let mut st = sim.lock();
    let action = st
        .find_action(&id)
        .filter(|a| !sim_not_found(&st, a, now))
        .ok_or_else(|| action_not_found(&id))?;
    let Some(cmd) = action.commands.get(index) else {
        return Err(bad_request(
            "InvalidInput",
            &format!("Command index {index} is out of range for action {id}"),
        ));
    };
    if cmd.spec.kind == CommandType::PutFile {
        return Err(bad_request(
            "InvalidInput",
            &format!("Command {index} ({}) has no result", cmd.spec.kind.as_str()),
        ));
    }
    if action.command_status(index, now) != CommandStatus::Completed {
        return Err(bad_request(
            "BadRequest",
            &format!("Command {index} of action {id} has not completed"),
        ));
    }
    let action_id = action.id.clone();
    let url = sim.issue_link(&mut st, action_id, index, now);
    Ok(json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/api/$metadata#Edm.String", sim.api_base), "value": url}),
    ))
}

/// `POST /api/machineactions/{id}/cancel` with `{"Comment": "..."}`.
pub(super) async fn cancel(sim: Arc<Sim>, req: Request, id: String) -> Result<Response, Response> {
    let now = sim.clock.now();
    let client = client_of(&req);
    let body = json_body(req, 1 << 16).await?;
    let Some(Value::String(comment)) = body.get("Comment") else {
        return Err(bad_request(
            "MissingRequiredParameter",
            "Comment is required",
        ));
    };
    let comment = comment.clone();
    let requestor = sim.requestor(client);
    let mut st = sim.lock();
    let Some(&i) = st.by_id.get(&id.to_ascii_lowercase()) else {
        return Err(action_not_found(&id));
    };
    let action = &mut st.actions[i];
    if action.status(now).is_final() {
        return Err(bad_request(
            "InvalidRequestBody",
            &format!(
                "Action {id} is already in a final state ({})",
                action.status(now).as_str()
            ),
        ));
    }
    action.cancellation = Some(Cancellation {
        at: now,
        requestor,
        comment,
    });
    let body = action.to_json(now, &sim.api_base);
    debug_assert_eq!(action.status(now), Status::Cancelled);
    Ok(json_response(StatusCode::OK, body))
}
