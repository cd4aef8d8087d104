//! Alert input: the project's own schema, a Defender alert as the alerts API returns it, and
//! either wrapped in an SNS notification or an EventBridge event, normalised into one [`Alert`].

pub mod kinds;
pub mod playbook;
pub mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::RejectCode;
use crate::defender::MachineId;
use crate::ids::{AlertId, EntraTenantId, TenantKey};
use crate::tenants::Claim;

/// Largest alert body accepted (SQS allows 256 KiB; an alert is far smaller).
pub const MAX_ALERT_BYTES: usize = 256 * 1024;

/// Where the alert came from, and in which wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    /// `{"schema": "lr.alert/v1", ...}`
    Native,
    /// A Defender alert entity.
    Defender,
}

/// The wrapping the alert arrived in, kept in the run record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// The alert itself was the message body.
    None,
    /// An SNS notification whose `Message` is the alert.
    Sns,
    /// An EventBridge event whose `detail` is the alert.
    EventBridge,
}

/// One alert, whatever it arrived as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Which schema the alert used; only native alerts may name a playbook.
    pub format: AlertFormat,
    /// The wrapping it arrived in.
    pub envelope: Envelope,
    /// The sender's id for the alert; part of the run id.
    pub alert_id: AlertId,
    /// The device the live response runs on.
    pub machine_id: MachineId,
    /// The alert's title; empty if it had none (at most 512 characters).
    pub title: String,
    /// The alert's category; empty if it had none (at most 128 characters).
    pub category: String,
    /// The alert's severity, as sent; empty if it had none (at most 32 characters).
    pub severity: String,
    /// The detection source or product that raised it.
    pub source: String,
    /// A playbook the sender asked for by name (native alerts only).
    pub playbook: Option<String>,
    /// The tenant the alert names, if it names one (checked against the tenant registry, with the
    /// sender, by [`crate::tenants::Tenancy::admit`]). Not recorded as the alert said it: the
    /// tenant intake checked is in the run's id.
    #[serde(skip)]
    pub tenant: Option<Claim>,
    /// Values for playbook placeholders, by name (validated when a playbook uses them).
    pub parameters: BTreeMap<String, String>,
}

/// Why an alert was refused: a stable code and a message that names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AlertError {
    /// The stable reject code, for the dead-letter attributes and metrics.
    pub code: RejectCode,
    /// What is wrong with the alert, for the sender to fix.
    pub message: String,
}

fn err(code: RejectCode, message: impl Into<String>) -> AlertError {
    AlertError {
        code,
        message: message.into(),
    }
}

/// The project's own alert schema, `lr.alert/v1`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeAlert {
    #[allow(dead_code)]
    schema: String,
    alert_id: String,
    machine_id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    playbook: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    tenant: Option<String>,
}

/// The fields of a Defender alert the pipeline uses; others are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefenderAlert {
    id: String,
    machine_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    detection_source: Option<String>,
    #[serde(default)]
    evidence: Option<Vec<Value>>,
    #[serde(default)]
    tenant_id: Option<String>,
}

const NATIVE_SCHEMA: &str = "lr.alert/v1";

/// Parses one message body.
pub fn parse(body: &str) -> Result<Alert, AlertError> {
    if body.len() > MAX_ALERT_BYTES {
        return Err(err(
            RejectCode::TooLarge,
            format!(
                "alert body is {} bytes; the limit is {MAX_ALERT_BYTES}",
                body.len()
            ),
        ));
    }
    let value = parse_json_strict(body)?;
    let (value, envelope) = unwrap_envelope(value)?;
    let mut alert = if value.get("schema").is_some() {
        parse_native(value)?
    } else if value.get("id").is_some() && value.get("machineId").is_some() {
        parse_defender(value)?
    } else if value.get("id").is_some() {
        return Err(err(
            RejectCode::MissingMachine,
            "the Defender alert has no machineId",
        ));
    } else {
        return Err(err(
            RejectCode::UnknownFormat,
            format!(
                "not an lr.alert/v1 alert (no \"schema\") nor a Defender alert (no \"id\" and \"machineId\"); top-level keys: {}",
                keys(&value)
            ),
        ));
    };
    alert.envelope = envelope;
    Ok(alert)
}

fn keys(v: &Value) -> String {
    match v.as_object() {
        Some(o) => o
            .keys()
            .take(10)
            .map(|k| k.chars().take(40).collect::<String>())
            .collect::<Vec<_>>()
            .join(", "),
        None => "(not an object)".into(),
    }
}

/// JSON with duplicate keys refused: two `machine_id`s are an attempt to confuse one reader or another.
fn parse_json_strict(body: &str) -> Result<Value, AlertError> {
    struct Strict(Value);
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Value;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                    Ok(Value::Bool(v))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                    Ok(Value::from(v))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                    Ok(Value::from(v))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                    Ok(serde_json::Number::from_f64(v)
                        .map(Value::Number)
                        .unwrap_or(Value::Null))
                }
                fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                    Ok(Value::String(v.to_string()))
                }
                fn visit_string<E>(self, v: String) -> Result<Value, E> {
                    Ok(Value::String(v))
                }
                fn visit_unit<E>(self) -> Result<Value, E> {
                    Ok(Value::Null)
                }
                fn visit_none<E>(self) -> Result<Value, E> {
                    Ok(Value::Null)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some(Strict(v)) = a.next_element()? {
                        out.push(v);
                    }
                    Ok(Value::Array(out))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Value, A::Error> {
                    let mut out = serde_json::Map::new();
                    while let Some(k) = a.next_key::<String>()? {
                        let Strict(v) = a.next_value()?;
                        if out.insert(k.clone(), v).is_some() {
                            return Err(serde::de::Error::custom(format!(
                                "duplicate key {:?}",
                                k.chars().take(40).collect::<String>()
                            )));
                        }
                    }
                    Ok(Value::Object(out))
                }
            }
            d.deserialize_any(V).map(Strict)
        }
    }
    // serde_json's recursion limit (128) stays on: deeply nested garbage is refused.
    let mut de = serde_json::Deserializer::from_str(body);
    let Strict(v) = Strict::deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| {
            let code = if e.to_string().contains("duplicate key") {
                RejectCode::DuplicateKey
            } else {
                RejectCode::InvalidJson
            };
            err(code, format!("alert body is not valid JSON: {e}"))
        })?;
    Ok(v)
}

/// An envelope inside an envelope is refused: one unwrapping, so that no wrapping can hide what
/// the alert is.
fn refuse_nested(inner: &Value) -> Result<(), AlertError> {
    if inner.get("Type").is_some() || inner.get("detail-type").is_some() {
        return Err(err(
            RejectCode::BadEnvelope,
            "nested envelopes are not accepted",
        ));
    }
    Ok(())
}

fn unwrap_envelope(v: Value) -> Result<(Value, Envelope), AlertError> {
    // SNS notification: {"Type": "Notification", "Message": "<json string>", ...}
    if v.get("Type").and_then(Value::as_str) == Some("Notification") {
        let msg = v.get("Message").and_then(Value::as_str).ok_or_else(|| {
            err(
                RejectCode::BadEnvelope,
                "SNS notification without a string Message",
            )
        })?;
        let inner = parse_json_strict(msg).map_err(|e| {
            err(
                RejectCode::BadEnvelope,
                format!("SNS Message: {}", e.message),
            )
        })?;
        refuse_nested(&inner)?;
        return Ok((inner, Envelope::Sns));
    }
    // EventBridge event: {"version": "0", "detail-type": ..., "source": ..., "detail": {...}}
    if v.get("detail-type").is_some() {
        let detail = v
            .get("detail")
            .filter(|d| d.is_object())
            .cloned()
            .ok_or_else(|| {
                err(
                    RejectCode::BadEnvelope,
                    "EventBridge event without an object detail",
                )
            })?;
        refuse_nested(&detail)?;
        return Ok((detail, Envelope::EventBridge));
    }
    if !v.is_object() {
        return Err(err(
            RejectCode::UnknownFormat,
            "alert body must be a JSON object",
        ));
    }
    Ok((v, Envelope::None))
}

/// Free text from the alert: bounded, no control or bidirectional-override characters.
fn text(field: &str, s: &str, max: usize) -> Result<String, AlertError> {
    if s.chars().count() > max {
        return Err(err(
            RejectCode::InvalidField,
            format!("{field} is longer than {max} characters"),
        ));
    }
    if s.chars().any(|c| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    }) {
        return Err(err(
            RejectCode::InvalidField,
            format!("{field} holds control or direction-override characters"),
        ));
    }
    Ok(s.to_string())
}

fn parse_native(v: Value) -> Result<Alert, AlertError> {
    let schema = v.get("schema").and_then(Value::as_str).unwrap_or_default();
    if schema != NATIVE_SCHEMA {
        return Err(err(
            RejectCode::UnknownSchema,
            format!(
                "schema {:?} is not supported (expected {NATIVE_SCHEMA:?})",
                schema.chars().take(40).collect::<String>()
            ),
        ));
    }
    let a: NativeAlert = serde_json::from_value(v)
        .map_err(|e| err(RejectCode::InvalidField, format!("lr.alert/v1: {e}")))?;
    let alert_id =
        AlertId::parse(&a.alert_id).map_err(|e| err(RejectCode::InvalidAlertId, e.to_string()))?;
    let machine_id = MachineId::parse(&a.machine_id)
        .map_err(|e| err(RejectCode::InvalidMachineId, e.to_string()))?;
    if a.parameters.len() > 16 {
        return Err(err(RejectCode::InvalidField, "at most 16 parameters"));
    }
    let mut parameters = BTreeMap::new();
    for (k, val) in a.parameters {
        if !(1..=64).contains(&k.len())
            || !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(err(
                RejectCode::InvalidField,
                format!(
                    "parameter name {:?} must be 1-64 of a-z 0-9 _",
                    k.chars().take(40).collect::<String>()
                ),
            ));
        }
        parameters.insert(k.clone(), text(&format!("parameters.{k}"), &val, 1024)?);
    }
    Ok(Alert {
        format: AlertFormat::Native,
        envelope: Envelope::None,
        alert_id,
        machine_id,
        title: text("title", &a.title, 512)?,
        category: text("category", &a.category, 128)?,
        severity: text("severity", &a.severity, 32)?,
        source: text("source", &a.source, 128)?,
        playbook: a.playbook.map(|p| text("playbook", &p, 64)).transpose()?,
        parameters,
        tenant: a
            .tenant
            .map(|t| TenantKey::parse(&t).map(Claim::Key))
            .transpose()
            .map_err(|e| err(RejectCode::InvalidField, format!("tenant: {e}")))?,
    })
}

fn parse_defender(v: Value) -> Result<Alert, AlertError> {
    let a: DefenderAlert = serde_json::from_value(v)
        .map_err(|e| err(RejectCode::InvalidField, format!("Defender alert: {e}")))?;
    let alert_id =
        AlertId::parse(&a.id).map_err(|e| err(RejectCode::InvalidAlertId, e.to_string()))?;
    let machine = a.machine_id.ok_or_else(|| {
        err(
            RejectCode::MissingMachine,
            "the Defender alert has no machineId",
        )
    })?;
    let machine_id =
        MachineId::parse(&machine).map_err(|e| err(RejectCode::InvalidMachineId, e.to_string()))?;
    let mut parameters = BTreeMap::new();
    // The first file evidence gives the file to fetch.
    if let Some(file) = a.evidence.iter().flatten().find(|e| {
        e.get("entityType")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("File"))
    }) {
        let dir = file
            .get("filePath")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = file
            .get("fileName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !dir.is_empty() && !name.is_empty() {
            let full = format!("{}\\{}", dir.trim_end_matches('\\'), name);
            parameters.insert("file_path".into(), text("evidence.filePath", &full, 1024)?);
        }
        if let Some(sha) = file.get("sha256").and_then(Value::as_str) {
            parameters.insert("file_sha256".into(), text("evidence.sha256", sha, 64)?);
        }
    }
    Ok(Alert {
        format: AlertFormat::Defender,
        envelope: Envelope::None,
        alert_id,
        machine_id,
        title: text("title", a.title.as_deref().unwrap_or_default(), 512)?,
        category: text("category", a.category.as_deref().unwrap_or_default(), 128)?,
        severity: text("severity", a.severity.as_deref().unwrap_or_default(), 32)?,
        source: text(
            "detectionSource",
            a.detection_source.as_deref().unwrap_or_default(),
            128,
        )?,
        playbook: None,
        parameters,
        tenant: a
            .tenant_id
            .map(|t| EntraTenantId::parse(&t).map(Claim::Entra))
            .transpose()
            .map_err(|e| err(RejectCode::InvalidField, format!("tenantId: {e}")))?,
    })
}

#[cfg(test)]
mod tests;
