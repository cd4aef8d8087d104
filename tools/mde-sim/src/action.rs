//! Machine actions: what a submission plans at creation, and what it looks like at any simulated time.
//! Status is derived from the plan and the clock, so a test that advances time sees every transition.
//! What each command yields is decided at submission, from the device and from the library as it is
//! then (a RunScript or PutFile of a file the library does not hold fails; a transcript names the
//! SHA-256 of the script version that ran).

use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::clock::format_ts;
use crate::config::{Device, SimConfig, unversioned};
use crate::content::FileContent;
use crate::large::{self, Folders};

/// The device's side of a session beyond its configuration: the working folders large-file splits
/// leave on it, and the large-file faults in force.
pub struct OnDevice<'a> {
    pub folders: &'a mut Folders,
    pub corrupt_part: Option<u64>,
    pub cleanup_fails: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandType {
    PutFile,
    RunScript,
    GetFile,
}

impl CommandType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PutFile" => Some(Self::PutFile),
            "RunScript" => Some(Self::RunScript),
            "GetFile" => Some(Self::GetFile),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PutFile => "PutFile",
            Self::RunScript => "RunScript",
            Self::GetFile => "GetFile",
        }
    }

    pub fn required_key(self) -> &'static str {
        match self {
            Self::PutFile => "FileName",
            Self::RunScript => "ScriptName",
            Self::GetFile => "Path",
        }
    }

    pub fn allowed_keys(self) -> &'static [&'static str] {
        match self {
            Self::PutFile => &["FileName"],
            Self::RunScript => &["ScriptName", "Args"],
            Self::GetFile => &["Path"],
        }
    }
}

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub kind: CommandType,
    pub params: Vec<(String, String)>,
}

impl CommandSpec {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a command leaves to download.
#[derive(Debug, Clone)]
pub enum ResultBody {
    /// A GetFile result: the file, gzip-compressed.
    File(FileContent),
    /// A RunScript transcript (JSON).
    Transcript(bytes::Bytes),
}

#[derive(Debug, Clone)]
pub struct PlannedCommand {
    pub spec: CommandSpec,
    /// When the command starts and ends; `None` if it never runs (an earlier command failed, or the
    /// device never came online).
    pub window: Option<(OffsetDateTime, OffsetDateTime)>,
    pub error: Option<String>,
    pub result: Option<ResultBody>,
}

#[derive(Debug, Clone)]
pub struct Cancellation {
    pub at: OffsetDateTime,
    pub requestor: String,
    pub comment: String,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub id: String,
    pub machine_id: String,
    pub dns_name: String,
    pub requestor: String,
    pub comment: String,
    pub created: OffsetDateTime,
    /// When an online device picks the session up; `None` if it never does (TimeOut).
    pub pickup: Option<OffsetDateTime>,
    /// When a session that was never picked up ends as TimeOut.
    pub timeout_at: Option<OffsetDateTime>,
    pub commands: Vec<PlannedCommand>,
    pub cancellation: Option<Cancellation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    TimeOut,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::TimeOut => "TimeOut",
            Self::Cancelled => "Cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    Created,
    Completed,
    Failed,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
        }
    }
}

/// What a submission asked for.
pub struct Submission {
    pub id: String,
    pub requestor: String,
    pub comment: String,
    pub commands: Vec<CommandSpec>,
    pub created: OffsetDateTime,
}

impl Action {
    /// Plans a session on `device`: when it starts, how long each command takes, which one fails.
    /// `library` gives the hex SHA-256 of the library file of a name (without regard to case), or
    /// `None` when the library holds no such file; it is asked at submission time.
    pub fn plan(
        submission: Submission,
        device: &Device,
        config: &SimConfig,
        sim_start: OffsetDateTime,
        library: &dyn Fn(&str) -> Option<String>,
        on_device: &mut OnDevice<'_>,
    ) -> Self {
        let Submission {
            id,
            requestor,
            comment,
            commands,
            created,
        } = submission;
        let s = &config.sim;
        let online_at = if device.online {
            Some(sim_start)
        } else {
            device
                .online_after_secs
                .map(|secs| sim_start + Duration::seconds(secs as i64))
        };
        let deadline = created + Duration::seconds(s.queue_window_secs as i64);
        let pickup = match online_at {
            Some(t) if t <= deadline => {
                Some(t.max(created) + Duration::seconds(s.pickup_secs as i64))
            }
            _ => None,
        };
        let timeout_at = if pickup.is_none() {
            Some(deadline)
        } else {
            None
        };
        let mut planned = Vec::with_capacity(commands.len());
        let mut cursor = pickup;
        for spec in commands {
            let Some(start) = cursor else {
                planned.push(PlannedCommand {
                    spec,
                    window: None,
                    error: None,
                    result: None,
                });
                continue;
            };
            let (secs, timeout, outcome) = run_command(&spec, device, config, library, on_device);
            let (end, error, result) = match outcome {
                Err(reason) => (
                    start + Duration::seconds(secs.min(1) as i64),
                    Some(reason),
                    None,
                ),
                Ok(_) if secs > timeout => (
                    start + Duration::seconds(timeout as i64),
                    Some(format!(
                        "{} timed out after {} minutes",
                        spec.kind.as_str(),
                        timeout / 60
                    )),
                    None,
                ),
                Ok(result) => (start + Duration::seconds(secs as i64), None, result),
            };
            cursor = if error.is_some() { None } else { Some(end) };
            planned.push(PlannedCommand {
                spec,
                window: Some((start, end)),
                error,
                result,
            });
        }
        Self {
            id,
            machine_id: device.machine_id.to_ascii_lowercase(),
            dns_name: device.dns_name.clone(),
            requestor,
            comment,
            created,
            pickup,
            timeout_at,
            commands: planned,
            cancellation: None,
        }
    }

    /// When the session ends on its own (ignoring cancellation).
    fn natural_end(&self) -> OffsetDateTime {
        if let Some(t) = self.timeout_at {
            return t;
        }
        self.commands
            .iter()
            .filter_map(|c| c.window.map(|(_, e)| e))
            .max()
            .or(self.pickup)
            .unwrap_or(self.created)
    }

    pub fn status(&self, now: OffsetDateTime) -> Status {
        let end = self.natural_end();
        if let Some(c) = &self.cancellation
            && c.at < end
            && c.at <= now
        {
            return Status::Cancelled;
        }
        if now >= end {
            if self.timeout_at.is_some() {
                return Status::TimeOut;
            }
            if self.commands.iter().any(|c| c.error.is_some()) {
                return Status::Failed;
            }
            return Status::Succeeded;
        }
        match self.pickup {
            Some(p) if now >= p => Status::InProgress,
            _ => Status::Pending,
        }
    }

    /// The moment after which nothing more changes for an observer at `now`.
    fn effective_now(&self, now: OffsetDateTime) -> OffsetDateTime {
        match &self.cancellation {
            Some(c) if c.at < now => c.at,
            _ => now,
        }
    }

    pub fn command_status(&self, index: usize, now: OffsetDateTime) -> CommandStatus {
        let now = self.effective_now(now);
        match self
            .commands
            .get(index)
            .and_then(|c| c.window.map(|w| (c, w)))
        {
            Some((c, (_, end))) if end <= now => {
                if c.error.is_some() {
                    CommandStatus::Failed
                } else {
                    CommandStatus::Completed
                }
            }
            _ => CommandStatus::Created,
        }
    }

    fn last_update(&self, now: OffsetDateTime) -> OffsetDateTime {
        let now = self.effective_now(now);
        let mut t = self.created;
        let mut consider = |x: OffsetDateTime| {
            if x <= now && x > t {
                t = x;
            }
        };
        if let Some(p) = self.pickup {
            consider(p);
        }
        if let Some(x) = self.timeout_at {
            consider(x);
        }
        for c in &self.commands {
            if let Some((s, e)) = c.window {
                consider(s);
                consider(e);
            }
        }
        if let Some(c) = &self.cancellation {
            consider(c.at);
        }
        t
    }

    /// The MachineAction entity as the API returns it.
    pub fn to_json(&self, now: OffsetDateTime, api_base: &str) -> Value {
        let mut v = self.entity(now);
        v.as_object_mut().map(|o| {
            o.insert(
                "@odata.context".into(),
                json!(format!("{api_base}/api/$metadata#MachineActions/$entity")),
            )
        });
        v
    }

    pub fn entity(&self, now: OffsetDateTime) -> Value {
        let eff = self.effective_now(now);
        let commands: Vec<Value> = self
            .commands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let status = self.command_status(i, now);
                let (start, end) = match c.window {
                    Some((s, e)) => (
                        (s <= eff).then(|| format_ts(s)),
                        (e <= eff).then(|| format_ts(e)),
                    ),
                    None => (None, None),
                };
                let errors: Vec<&str> = match (&c.error, status) {
                    (Some(e), CommandStatus::Failed) => vec![e.as_str()],
                    _ => vec![],
                };
                json!({
                    "index": i,
                    "startTime": start,
                    "endTime": end,
                    "commandStatus": status.as_str(),
                    "errors": errors,
                    "command": {
                        "type": c.spec.kind.as_str(),
                        "params": c.spec.params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                    }
                })
            })
            .collect();
        let cancel = self.cancellation.as_ref().filter(|c| c.at <= now);
        json!({
            "id": self.id,
            "type": "LiveResponse",
            "scope": null,
            "requestor": self.requestor,
            "requestorComment": self.comment,
            "status": self.status(now).as_str(),
            "machineId": self.machine_id,
            "computerDnsName": self.dns_name,
            "creationDateTimeUtc": format_ts(self.created),
            "lastUpdateDateTimeUtc": format_ts(self.last_update(now)),
            "cancellationRequestor": cancel.map(|c| c.requestor.clone()),
            "cancellationComment": cancel.map(|c| c.comment.clone()),
            "cancellationDateTimeUtc": cancel.map(|c| format_ts(c.at)),
            "errorHResult": 0,
            "externalId": null,
            "requestSource": "PublicApi",
            "title": null,
            "troubleshootInfo": null,
            "relatedFileInfo": null,
            "commands": commands,
        })
    }
}

type Outcome = Result<Option<ResultBody>, String>;

/// `template` with each `{key}` of `values` replaced in one pass (a value is never searched again,
/// so arguments that look like placeholders stay as they are).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        match values.iter().find(|(k, _)| {
            tail.strip_prefix('{')
                .and_then(|t| t.strip_prefix(*k))
                .is_some_and(|t| t.starts_with('}'))
        }) {
            Some((k, v)) => {
                out.push_str(v);
                rest = &tail[k.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// How long a command takes, its timeout, and what it yields on this device.
fn run_command(
    spec: &CommandSpec,
    device: &Device,
    config: &SimConfig,
    library: &dyn Fn(&str) -> Option<String>,
    on_device: &mut OnDevice<'_>,
) -> (u64, u64, Outcome) {
    let s = &config.sim;
    match spec.kind {
        CommandType::GetFile => {
            let path = spec.param("Path").unwrap_or_default();
            if let Some(part) =
                on_device
                    .folders
                    .part(&device.machine_id, path, on_device.corrupt_part)
            {
                return (
                    device.command_secs,
                    s.get_file_timeout_secs,
                    Ok(Some(ResultBody::File(part))),
                );
            }
            match device.file(path) {
                Some(f) if f.size > s.get_file_limit_bytes => (
                    device.command_secs.min(1),
                    s.get_file_timeout_secs,
                    Err(format!(
                        "File {path} is {} bytes, over the {} bytes GetFile can fetch",
                        f.size, s.get_file_limit_bytes
                    )),
                ),
                Some(f) => (
                    f.secs.unwrap_or(device.command_secs),
                    s.get_file_timeout_secs,
                    Ok(Some(ResultBody::File(FileContent::new(
                        &device.machine_id,
                        &f.path,
                        f.size,
                    )))),
                ),
                None => (
                    device.command_secs,
                    s.get_file_timeout_secs,
                    Err(format!("File {path} was not found on the device")),
                ),
            }
        }
        CommandType::RunScript => {
            let name = spec.param("ScriptName").unwrap_or_default();
            let args = spec.param("Args").unwrap_or_default();
            // Only what the library holds runs, whatever `[[scripts]]` says about it.
            let Some(sha256) = library(name) else {
                return (
                    device.command_secs,
                    s.run_script_timeout_secs,
                    Err(format!("Script {name} was not found in the library")),
                );
            };
            let script = config.script(name);
            let base = unversioned(name).unwrap_or_else(|| name.to_string());
            let device_side = if script.is_some() {
                None
            } else if base.eq_ignore_ascii_case(large::SPLIT_SCRIPT) {
                Some(large::split(
                    on_device.folders,
                    device,
                    args,
                    s.get_file_limit_bytes,
                ))
            } else if base.eq_ignore_ascii_case(large::CLEANUP_SCRIPT) {
                Some(large::cleanup(
                    on_device.folders,
                    device,
                    args,
                    on_device.cleanup_fails,
                ))
            } else {
                None
            };
            let (script_name, exit_code, output, errors, secs) = match (script, device_side) {
                (_, Some((code, out, err))) => (name, code, out, err, device.command_secs),
                (Some(sc), None) => (
                    sc.name.as_str(),
                    sc.exit_code,
                    fill(
                        &sc.output,
                        &[
                            ("args", args),
                            ("machine", &device.dns_name),
                            ("sha256", &sha256),
                        ],
                    ),
                    sc.errors.clone(),
                    sc.secs.unwrap_or(device.command_secs),
                ),
                (None, None) => (
                    name,
                    0,
                    format!("{name} sha256={sha256} args={args}"),
                    String::new(),
                    device.command_secs,
                ),
            };
            let mut t = serde_json::Map::new();
            t.insert("script_name".into(), json!(script_name));
            t.insert("exit_code".into(), json!(exit_code));
            t.insert("script_output".into(), json!(output));
            t.insert(s.transcript_error_field.clone(), json!(errors));
            (
                secs,
                s.run_script_timeout_secs,
                Ok(Some(ResultBody::Transcript(bytes::Bytes::from(
                    serde_json::to_vec(&Value::Object(t)).unwrap_or_default(),
                )))),
            )
        }
        CommandType::PutFile => {
            let name = spec.param("FileName").unwrap_or_default();
            let outcome = if library(name).is_some() {
                Ok(None)
            } else {
                Err(format!("File {name} was not found in the library"))
            };
            (device.command_secs, s.put_file_timeout_secs, outcome)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Script;

    #[test]
    fn placeholders_are_filled_in_one_pass() {
        let values = [
            ("args", "{machine}"),
            ("machine", "ws-01"),
            ("sha256", "ab12"),
        ];
        assert_eq!(
            fill("{machine} ran {args} ({sha256}) {other} {", &values),
            "ws-01 ran {machine} (ab12) {other} {"
        );
    }

    fn run(script: &str, library: &dyn Fn(&str) -> Option<String>) -> Outcome {
        let config = SimConfig {
            scripts: vec![Script {
                name: "triage.ps1".into(),
                output: "{machine}: {args} @ {sha256}".into(),
                ..Script::default()
            }],
            ..SimConfig::default()
        };
        let device = Device {
            dns_name: "ws-01".into(),
            ..Device::default()
        };
        let spec = CommandSpec {
            kind: CommandType::RunScript,
            params: vec![
                ("ScriptName".into(), script.into()),
                ("Args".into(), "-Quick".into()),
            ],
        };
        let mut folders = Folders::default();
        let mut on_device = OnDevice {
            folders: &mut folders,
            corrupt_part: None,
            cleanup_fails: false,
        };
        run_command(&spec, &device, &config, library, &mut on_device).2
    }

    fn output(outcome: Outcome) -> Value {
        match outcome {
            Ok(Some(ResultBody::Transcript(b))) => serde_json::from_slice(&b).unwrap(),
            other => panic!("not a transcript: {other:?}"),
        }
    }

    #[test]
    fn scripts_run_only_from_the_library_and_name_its_version() {
        let empty = |_: &str| None;
        assert_eq!(
            run("triage.ps1", &empty).unwrap_err(),
            "Script triage.ps1 was not found in the library"
        );
        let library = |n: &str| {
            n.eq_ignore_ascii_case("triage.ps1")
                .then(|| "ab12".to_string())
        };
        let t = output(run("TRIAGE.ps1", &library));
        assert_eq!(t["script_name"], "triage.ps1");
        assert_eq!(t["script_output"], "ws-01: -Quick @ ab12");
        let any = |_: &str| Some("cd34".to_string());
        let t = output(run("other.ps1", &any));
        assert_eq!(t["exit_code"], 0);
        assert_eq!(t["script_output"], "other.ps1 sha256=cd34 args=-Quick");
    }
}
