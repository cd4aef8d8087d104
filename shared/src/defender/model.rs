//! Defender's entities as typed values: ids that validate, statuses that are enums, and
//! entities that ignore fields they do not know.

use serde::{Deserialize, Serialize};

pub use crate::ids::{ActionId, IdError, MachineId};

/// A machine action's status. Unknown values are kept rather than failing the whole entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionStatus {
    /// Queued; Defender has not started it.
    Pending,
    /// Running on the machine.
    InProgress,
    /// Every command finished; results may be downloadable.
    Succeeded,
    /// Defender gave up; the command results say why.
    Failed,
    /// The machine did not respond in time.
    TimeOut,
    /// Cancelled, by the pipeline at the run's deadline or by someone else.
    Cancelled,
    /// A status this code does not know, kept verbatim; treated as not final.
    #[serde(untagged)]
    Other(String),
}

impl ActionStatus {
    /// Final statuses never change again; polling stops.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress | Self::Other(_))
    }
}

/// One command's status inside a machine action. Unknown values are kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// Accepted, not started.
    Created,
    /// Running.
    InProgress,
    /// Finished; a result package exists if the type has one.
    Completed,
    /// Finished with errors (see `CommandResult::errors`).
    Failed,
    /// A status this code does not know, kept verbatim.
    #[serde(untagged)]
    Other(String),
}

/// The live response command types this code sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandType {
    /// Copy a file from the live response library to the machine; no result package.
    PutFile,
    /// Run a library script; the result package is a transcript.
    RunScript,
    /// Collect a file from the machine; the result package is the file (usually gzip-compressed).
    GetFile,
}

impl CommandType {
    /// Whether the command leaves a result package to download.
    pub fn has_result(self) -> bool {
        !matches!(self, Self::PutFile)
    }
}

/// One named command parameter (`ScriptName`, `Args`, `Path`, `FileName`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// Parameter name, as Defender spells it (case-sensitive).
    pub key: String,
    /// Parameter value, sent verbatim.
    pub value: String,
}

/// One live response command as Defender takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// What the command does; serialized as `type`.
    #[serde(rename = "type")]
    pub kind: CommandType,
    /// The command's parameters, in the order they are sent.
    pub params: Vec<Param>,
}

impl Command {
    /// A `RunScript` of a library script, with `Args` only when `args` is `Some`.
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

    /// A `GetFile` of `path` on the machine.
    pub fn get_file(path: &str) -> Self {
        Self {
            kind: CommandType::GetFile,
            params: vec![Param {
                key: "Path".into(),
                value: path.into(),
            }],
        }
    }

    /// A `PutFile` of the library file `file_name`.
    pub fn put_file(file_name: &str) -> Self {
        Self {
            kind: CommandType::PutFile,
            params: vec![Param {
                key: "FileName".into(),
                value: file_name.into(),
            }],
        }
    }

    /// The live response library file this command uses: a `PutFile`'s file or a `RunScript`'s
    /// script; `None` for a `GetFile`.
    pub fn library_file(&self) -> Option<&str> {
        match self.kind {
            CommandType::PutFile => self.param("FileName"),
            CommandType::RunScript => self.param("ScriptName"),
            CommandType::GetFile => None,
        }
    }

    /// The value of the first parameter named `key` (exact case), or `None` if absent.
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
    /// The commands, run in order on the machine.
    #[serde(rename = "Commands")]
    pub commands: Vec<Command>,
    /// Free text shown in the Defender portal with the action.
    #[serde(rename = "Comment")]
    pub comment: String,
}

/// One command's progress inside a `MachineAction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// Position of the command in the request, from 0; used to fetch its result package.
    pub index: u32,
    /// When it started, as Defender's timestamp text; `None` until it starts.
    pub start_time: Option<String>,
    /// When it ended, as Defender's timestamp text; `None` until it ends.
    pub end_time: Option<String>,
    /// Where the command stands.
    pub command_status: CommandStatus,
    /// Error messages from Defender; empty (also when sent as `null`) if none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub errors: Vec<String>,
    /// The command as submitted.
    pub command: Command,
}

/// A MachineAction entity. Unknown fields are ignored; absent optional ones are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineAction {
    /// The action's id; every later call about it uses this.
    pub id: ActionId,
    /// Action type, e.g. `LiveResponse`; `None` if Defender omits it.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Who submitted the action, as Defender names them.
    pub requestor: Option<String>,
    /// The comment given at submission.
    pub requestor_comment: Option<String>,
    /// Where the action stands; see `ActionStatus::is_final`.
    pub status: ActionStatus,
    /// The machine the action runs on.
    pub machine_id: MachineId,
    /// The machine's DNS name, if Defender knows it.
    pub computer_dns_name: Option<String>,
    /// When the action was created, as Defender's UTC timestamp text.
    pub creation_date_time_utc: Option<String>,
    /// When the action last changed, as Defender's UTC timestamp text.
    pub last_update_date_time_utc: Option<String>,
    /// Who cancelled the action; `None` unless cancelled.
    pub cancellation_requestor: Option<String>,
    /// The comment given when cancelling; `None` unless cancelled.
    pub cancellation_comment: Option<String>,
    /// When the action was cancelled, as UTC timestamp text; `None` unless cancelled.
    pub cancellation_date_time_utc: Option<String>,
    /// Per-command progress, in request order; empty (also when sent as `null`) if none.
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
    /// The script that ran (also read from `name`).
    #[serde(alias = "name")]
    pub script_name: Option<String>,
    /// The script's exit code; `None` if it did not finish or Defender omits it.
    pub exit_code: Option<i64>,
    /// Standard output; empty if absent.
    #[serde(default)]
    pub script_output: String,
    /// Standard error; empty if absent.
    #[serde(default, alias = "script_error")]
    pub script_errors: String,
}

/// A file in the tenant's live response library.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LibraryFile {
    /// The name scripts and `PutFile` refer to it by.
    pub file_name: String,
    /// Hex SHA-256 of the content, if Defender reports it.
    pub sha256: Option<String>,
    /// Description given at upload.
    pub description: Option<String>,
    /// Upload time, as Defender's timestamp text.
    pub creation_time: Option<String>,
    /// Last replacement time, as Defender's timestamp text.
    pub last_updated_time: Option<String>,
    /// Who uploaded it.
    pub created_by: Option<String>,
    /// Whether the script takes `Args`; `false` if absent or null.
    #[serde(default, deserialize_with = "null_is_false")]
    pub has_parameters: bool,
    /// What the script's arguments mean, as given at upload.
    pub parameters_description: Option<String>,
}

fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `$filter` terms for listing machine actions (`eq` clauses joined by `and`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionFilter {
    /// Only actions on this machine.
    pub machine_id: Option<MachineId>,
    /// Only actions in this status.
    pub status: Option<ActionStatus>,
    /// Only actions submitted by this requestor.
    pub requestor: Option<String>,
    /// Only live response actions (`type eq 'LiveResponse'`).
    pub live_response_only: bool,
    /// Only actions created at or after this time.
    pub created_since: Option<time::OffsetDateTime>,
}

impl ActionFilter {
    /// The `$filter` value, or `None` when no term is set (or a status or time cannot be written), in which case nothing is filtered.
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

    #[test]
    fn a_library_entry_with_null_fields_still_reads() {
        let f: LibraryFile = serde_json::from_value(serde_json::json!({
            "fileName": "x.ps1", "sha256": null, "description": null,
            "hasParameters": null, "parametersDescription": null
        }))
        .unwrap();
        assert!(!f.has_parameters && f.sha256.is_none());
    }
}
