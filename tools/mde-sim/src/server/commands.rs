//! Validation of a `runliveresponse` body (`{"Commands": [...], "Comment": "..."}`) the way
//! Defender validates it: property names are case-sensitive, unknown properties and parameters are
//! refused, each command type needs its own parameter; a missing piece is
//! `MissingRequiredParameter`, a malformed one `InvalidRequestBody`.
//!
//! Separate from the submit handler because it is pure (JSON in, commands or a 400 out) and is
//! most of what a client can get wrong.

use axum::response::Response;
use serde_json::{Map, Value};

use super::reply::bad_request;
use crate::action::{CommandSpec, CommandType};

/// `obj[key]` as the JSON type `want` picks out, or a 400: `MissingRequiredParameter` when absent,
/// `InvalidRequestBody` ("{prefix}{key} must be {kind}") when of another type.
fn field<'a, T>(
    obj: &'a Map<String, Value>,
    prefix: &str,
    key: &str,
    kind: &str,
    want: impl Fn(&'a Value) -> Option<T>,
) -> Result<T, Response> {
    match obj.get(key) {
        None => Err(bad_request(
            "MissingRequiredParameter",
            &format!("{prefix}{key} is required"),
        )),
        Some(v) => want(v).ok_or_else(|| {
            bad_request(
                "InvalidRequestBody",
                &format!("{prefix}{key} must be {kind}"),
            )
        }),
    }
}

/// The commands and the comment of a submission.
pub(super) fn parse_commands(body: &Value) -> Result<(Vec<CommandSpec>, String), Response> {
    let bad = |code: &str, msg: String| bad_request(code, &msg);
    let obj = body.as_object().ok_or_else(|| {
        bad(
            "InvalidRequestBody",
            "Request body must be a JSON object".into(),
        )
    })?;
    for key in obj.keys() {
        if key != "Commands" && key != "Comment" {
            return Err(bad(
                "InvalidRequestBody",
                format!("Unknown property '{key}' (property names are case-sensitive)"),
            ));
        }
    }
    let comment = field(obj, "", "Comment", "a string", Value::as_str)?.to_string();
    let commands = field(obj, "", "Commands", "an array", Value::as_array)?;
    if commands.is_empty() {
        return Err(bad(
            "InvalidRequestBody",
            "Commands must not be empty".into(),
        ));
    }
    let mut specs = Vec::with_capacity(commands.len());
    for (i, c) in commands.iter().enumerate() {
        let c = c.as_object().ok_or_else(|| {
            bad(
                "InvalidRequestBody",
                format!("Commands[{i}] must be an object"),
            )
        })?;
        let prefix = format!("Commands[{i}].");
        let t = field(c, &prefix, "type", "a string", Value::as_str)?;
        let kind = CommandType::parse(t).ok_or_else(|| {
            bad(
                "InvalidRequestBody",
                format!("Commands[{i}].type '{t}' is not one of PutFile, RunScript, GetFile"),
            )
        })?;
        let params = field(c, &prefix, "params", "an array", Value::as_array)?;
        let mut kv = Vec::with_capacity(params.len());
        for p in params {
            let (Some(Value::String(k)), Some(Value::String(v))) = (p.get("key"), p.get("value"))
            else {
                return Err(bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}].params entries need string 'key' and 'value'"),
                ));
            };
            if !kind.allowed_keys().contains(&k.as_str()) {
                return Err(bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}]: {} takes no parameter '{k}'", kind.as_str()),
                ));
            }
            kv.push((k.clone(), v.clone()));
        }
        if !kv
            .iter()
            .any(|(k, v)| k == kind.required_key() && !v.is_empty())
        {
            return Err(bad(
                "MissingRequiredParameter",
                format!(
                    "Commands[{i}]: {} requires parameter '{}'",
                    kind.as_str(),
                    kind.required_key()
                ),
            ));
        }
        specs.push(CommandSpec { kind, params: kv });
    }
    Ok((specs, comment))
}
