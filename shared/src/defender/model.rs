//! Defender's entities as typed values: ids that validate, statuses that are enums, and
//! entities that ignore fields they do not know.

use serde::{Deserialize, Serialize};

pub use crate::ids::{ActionId, IdError, MachineId};

/// A machine action's status. Unknown values are kept rather than failing the whole entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    TimeOut,
    Cancelled,
    #[serde(untagged)]
    Other(String),
}

impl ActionStatus {
    /// Final statuses never change again; polling stops.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress | Self::Other(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    Created,
    InProgress,
    Completed,
    Failed,
    #[serde(untagged)]
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandType {
    PutFile,
    RunScript,
    GetFile,
}

impl CommandType {
    /// Whether the command leaves a result package to download.
    pub fn has_result(self) -> bool {
        !matches!(self, Self::PutFile)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    pub key: String,
    pub value: String,
}

/// One live response command as Defender takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    #[serde(rename = "type")]
    pub kind: CommandType,
    pub params: Vec<Param>,
}

impl Command {
    pub fn run_script(script: &str, args: Option<&str>) -> Self {
        let mut params = vec![Param {
            key: "ScriptName".into(),
            value: script.into(),
        }];
        if let Some(a) = args {
            params.push(Param {
                key: "Args".into(),
                value: a.into(),
            });
        }
        Self {
            kind: CommandType::RunScript,
            params,
        }
    }

    pub fn get_file(path: &str) -> Self {
        Self {
            kind: CommandType::GetFile,
            params: vec![Param {
                key: "Path".into(),
                value: path.into(),
            }],
        }
    }

    pub fn put_file(file_name: &str) -> Self {
        Self {
            kind: CommandType::PutFile,
            params: vec![Param {
                key: "FileName".into(),
                value: file_name.into(),
            }],
        }
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }
}

/// The body of `POST /api/machines/{id}/runliveresponse` (property names are case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveResponseRequest {
    #[serde(rename = "Commands")]
    pub commands: Vec<Command>,
    #[serde(rename = "Comment")]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    pub index: u32,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub command_status: CommandStatus,
    #[serde(default, deserialize_with = "null_as_default")]
    pub errors: Vec<String>,
    pub command: Command,
}

/// A MachineAction entity. Unknown fields are ignored; absent optional ones are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineAction {
    pub id: ActionId,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub requestor: Option<String>,
    pub requestor_comment: Option<String>,
    pub status: ActionStatus,
    pub machine_id: MachineId,
    pub computer_dns_name: Option<String>,
    pub creation_date_time_utc: Option<String>,
    pub last_update_date_time_utc: Option<String>,
    pub cancellation_requestor: Option<String>,
    pub cancellation_comment: Option<String>,
    pub cancellation_date_time_utc: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub commands: Vec<CommandResult>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A RunScript result package. Both spellings of the error field are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    #[serde(alias = "name")]
    pub script_name: Option<String>,
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub script_output: String,
    #[serde(default, alias = "script_error")]
    pub script_errors: String,
}

/// A file in the tenant's live response library.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LibraryFile {
    pub file_name: String,
    pub sha256: Option<String>,
    pub description: Option<String>,
    pub creation_time: Option<String>,
    pub last_updated_time: Option<String>,
    pub created_by: Option<String>,
    #[serde(default)]
    pub has_parameters: bool,
    pub parameters_description: Option<String>,
}

/// `$filter` terms for listing machine actions (`eq` clauses joined by `and`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionFilter {
    pub machine_id: Option<MachineId>,
    pub status: Option<ActionStatus>,
    pub requestor: Option<String>,
    pub live_response_only: bool,
    /// Only actions created at or after this time.
    pub created_since: Option<time::OffsetDateTime>,
}

impl ActionFilter {
    pub fn to_odata(&self) -> Option<String> {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut terms = Vec::new();
        if let Some(m) = &self.machine_id {
            terms.push(format!("machineId eq {}", quote(m.as_str())));
        }
        if let Some(s) = &self.status {
            let v = serde_json::to_value(s).ok()?;
            terms.push(format!("status eq {}", quote(v.as_str()?)));
        }
        if let Some(r) = &self.requestor {
            terms.push(format!("requestor eq {}", quote(r)));
        }
        if self.live_response_only {
            terms.push("type eq 'LiveResponse'".into());
        }
        if let Some(t) = self.created_since {
            // An OData DateTimeOffset literal is written bare: 2026-11-29T23:00:00Z.
            let t = t
                .to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()?;
            terms.push(format!("creationDateTimeUtc ge {t}"));
        }
        (!terms.is_empty()).then(|| terms.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_forty_hex_characters() {
        let id = MachineId::parse("1E5BC9D7E413DDD7902C2932E418702B84D0CC07").unwrap();
        assert_eq!(id.as_str(), "1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
        for bad in [
            "",
            "1e5bc9d7",
            "../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "1e5bc9d7e413ddd7902c2932e418702b84d0cc0g",
            "1e5bc9d7e413ddd7902c2932e418702b84d0cc07/",
            "1e5bc9d7e413ddd7902c2932e418702b84d0cc0７",
        ] {
            assert!(MachineId::parse(bad).is_err(), "{bad}");
        }
        let err = MachineId::parse(&"x".repeat(500)).unwrap_err().to_string();
        assert!(err.len() < 200, "errors echo a bounded prefix: {err}");
    }

    #[test]
    fn action_ids_are_guids() {
        assert!(ActionId::parse("988cc94e-7a8f-4b28-ab65-54970c5d5018").is_ok());
        for bad in [
            "988cc94e7a8f4b28ab6554970c5d5018",
            "988cc94e-7a8f-4b28-ab65-54970c5d501",
            "988cc94e-7a8f-4b28-ab65-54970c5d5018/cancel",
            "..",
        ] {
            assert!(ActionId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn machine_action_tolerates_unknown_fields_and_statuses() {
        let v = serde_json::json!({
            "@odata.context": "x", "id": "988cc94e-7a8f-4b28-ab65-54970c5d5018", "type": "LiveResponse",
            "status": "SomethingNew", "machineId": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
            "brandNewField": {"a": 1}, "errorHResult": 0, "commands": [
                {"index": 0, "startTime": null, "endTime": null, "commandStatus": "Created", "errors": null,
                 "command": {"type": "GetFile", "params": [{"key": "Path", "value": "C:\\x"}]}}
            ]
        });
        let a: MachineAction = serde_json::from_value(v).unwrap();
        assert_eq!(a.status, ActionStatus::Other("SomethingNew".into()));
        assert!(!a.status.is_final());
        assert_eq!(a.commands[0].command.param("Path"), Some("C:\\x"));
        assert!(a.commands[0].errors.is_empty());
    }

    #[test]
    fn transcripts_accept_both_error_spellings() {
        let old: Transcript = serde_json::from_str(
            r#"{"script_name":"a.ps1","exit_code":3,"script_output":"o","script_error":"e"}"#,
        )
        .unwrap();
        let new: Transcript = serde_json::from_str(
            r#"{"script_name":"a.ps1","exit_code":3,"script_output":"o","script_errors":"e"}"#,
        )
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(new.exit_code, Some(3));
    }

    #[test]
    fn request_uses_the_case_sensitive_property_names() {
        let r = LiveResponseRequest {
            commands: vec![
                Command::run_script("a.ps1", Some("-x")),
                Command::get_file("C:\\f"),
            ],
            comment: "c".into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["Commands"][0]["type"], "RunScript");
        assert_eq!(v["Commands"][0]["params"][1]["key"], "Args");
        assert_eq!(v["Comment"], "c");
    }

    #[test]
    fn filters_quote_values() {
        let f = ActionFilter {
            machine_id: Some(MachineId::parse(&"a".repeat(40)).unwrap()),
            status: Some(ActionStatus::Pending),
            requestor: Some("o'brien".into()),
            live_response_only: true,
            created_since: None,
        };
        assert_eq!(
            f.to_odata().unwrap(),
            format!(
                "machineId eq '{}' and status eq 'Pending' and requestor eq 'o''brien' and type eq 'LiveResponse'",
                "a".repeat(40)
            )
        );
        assert_eq!(ActionFilter::default().to_odata(), None);
        let since = ActionFilter {
            created_since: Some(time::macros::datetime!(2026-11-29 23:00:00.123 +01:00)),
            ..ActionFilter::default()
        };
        assert_eq!(
            since.to_odata().as_deref(),
            Some("creationDateTimeUtc ge 2026-11-29T22:00:00Z")
        );
    }
}
