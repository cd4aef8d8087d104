//! The simulator's configuration: devices, how scripts behave when run, the live response library
//! a fresh simulator starts with, API clients, limits and faults.
//! Read from TOML (see `tools/mde-sim/fleet.example.toml`); every field but the device list has a default.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub sim: SimSettings,
    pub limits: Limits,
    pub faults: Faults,
    pub clients: Vec<Client>,
    pub devices: Vec<Device>,
    /// How scripts behave when run; a RunScript runs only what the library holds (see `library`).
    pub scripts: Vec<Script>,
    /// The live response library a fresh (or reset) simulator starts with: scripts and PutFile
    /// sources. A pipeline may upload more (or newer versions) through the API.
    pub library: Vec<LibrarySeed>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            sim: SimSettings::default(),
            limits: Limits::default(),
            faults: Faults::default(),
            clients: vec![Client::default()],
            devices: Vec::new(),
            scripts: Vec::new(),
            library: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read simulator config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("simulator config {path} is not valid TOML for this schema: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("simulator config: {0}")]
    Invalid(String),
}

impl SimConfig {
    pub fn from_toml_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: SimConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<string>".into(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sim.time_scale <= 0.0 || !self.sim.time_scale.is_finite() {
            return Err(ConfigError::Invalid(format!(
                "sim.time_scale must be a positive number, got {}",
                self.sim.time_scale
            )));
        }
        for d in &self.devices {
            if d.machine_id.len() != 40 || !d.machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "device {:?}: machine_id must be 40 hex characters",
                    d.machine_id
                )));
            }
        }
        for s in &self.scripts {
            if !valid_library_name(&s.name) {
                return Err(ConfigError::Invalid(format!(
                    "script {:?}: library names take letters, digits, '-', '_' and '.'",
                    s.name
                )));
            }
        }
        // Lower-case name -> (entry number, name as given).
        let mut seen: HashMap<String, (usize, &str)> = HashMap::new();
        for (i, f) in self.library.iter().enumerate() {
            let n = i + 1;
            if !valid_library_name(&f.name) {
                return Err(ConfigError::Invalid(format!(
                    "library file {:?} ([[library]] entry {n}): library names take letters, digits, '-', '_' and '.'",
                    f.name
                )));
            }
            if let Some((first, name)) = seen.insert(f.name.to_ascii_lowercase(), (n, &f.name)) {
                return Err(ConfigError::Invalid(format!(
                    "library file {:?} ([[library]] entry {n}) is seeded twice: entry {first} is {name:?} (library names compare without regard to case)",
                    f.name
                )));
            }
        }
        Ok(())
    }

    /// How the script `name` behaves: the `[[scripts]]` entry of that name, or of the name it is
    /// a version of (`triage-6bf94f0d21df.ps1` is a version of `triage.ps1`: the pipeline keeps a
    /// bundled script under its name with 12 hex digits of its SHA-256 before the extension).
    pub fn script(&self, name: &str) -> Option<&Script> {
        let base = unversioned(name);
        self.scripts
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(name))
            .or_else(|| {
                base.and_then(|b| {
                    self.scripts
                        .iter()
                        .find(|x| x.name.eq_ignore_ascii_case(&b))
                })
            })
    }

    pub fn device(&self, machine_id: &str) -> Option<&Device> {
        self.devices
            .iter()
            .find(|d| d.machine_id.eq_ignore_ascii_case(machine_id))
    }
}

/// `stem-<12 hex>.ext` → `stem.ext` (and `name-<12 hex>` → `name`); `None` for other names.
pub(crate) fn unversioned(name: &str) -> Option<String> {
    let (head, ext) = match name.rsplit_once('.') {
        Some((h, e)) if h.contains('-') => (h, Some(e)),
        _ => (name, None),
    };
    let (stem, tag) = head.rsplit_once('-')?;
    if stem.is_empty() || tag.len() != 12 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(match ext {
        Some(e) => format!("{stem}.{e}"),
        None => stem.to_string(),
    })
}

pub fn valid_library_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Simulated time at start (RFC 3339); default: the real time at start.
    pub start_time: Option<String>,
    /// How long a session waits for an unavailable device before it ends as TimeOut (3 days; newer docs: 2 hours).
    pub queue_window_secs: u64,
    /// Delay between submission and an online device picking the session up.
    pub pickup_secs: u64,
    pub token_lifetime_secs: u64,
    pub link_lifetime_secs: u64,
    pub run_script_timeout_secs: u64,
    pub get_file_timeout_secs: u64,
    pub put_file_timeout_secs: u64,
    /// Transcript field for standard error: "script_errors" (newer) or "script_error" (older docs).
    pub transcript_error_field: String,
    /// Largest library upload accepted through the API.
    pub library_max_bytes: u64,
    /// Largest file a GetFile fetches (Defender's limit: 3 GB); larger ones fail.
    pub get_file_limit_bytes: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            start_time: None,
            queue_window_secs: 3 * 24 * 3600,
            pickup_secs: 5,
            token_lifetime_secs: 3599,
            link_lifetime_secs: 30 * 60,
            run_script_timeout_secs: 10 * 60,
            get_file_timeout_secs: 30 * 60,
            put_file_timeout_secs: 10 * 60,
            transcript_error_field: "script_errors".into(),
            library_max_bytes: 20 * 1024 * 1024,
            get_file_limit_bytes: 3_000_000_000,
        }
    }
}

/// The documented limits, each a sliding window in simulated time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub submissions_per_minute: u32,
    pub running_sessions: u32,
    /// Per endpoint group (status, result link, cancel), as documented per API.
    pub gets_per_minute: u32,
    pub gets_per_hour: u32,
    /// Send `Retry-After` with 429s (real seconds, at least 1).
    pub retry_after_header: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            submissions_per_minute: 10,
            running_sessions: 25,
            gets_per_minute: 100,
            gets_per_hour: 1500,
            retry_after_header: true,
        }
    }
}

/// Seeded fault injection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub seed: u64,
    /// By endpoint: token, submit, get_action, list_actions, link, cancel, library, blob.
    pub endpoints: BTreeMap<String, EndpointFaults>,
    /// A new action answers 404 on status and link calls for this many simulated seconds.
    pub not_found_after_create_secs: u64,
    /// Chance that a download is cut, and after how many bytes of the response.
    pub download_cut_probability: f64,
    pub download_cut_after_bytes: u64,
    /// Chance that a new link stops working after `link_early_expiry_secs` although its `se` says later.
    pub link_early_expiry_probability: f64,
    pub link_early_expiry_secs: u64,
    /// The part (1-based) of every large-file split whose GetFile serves other bytes than the
    /// part map's hash says (a part altered on the device or on its way).
    pub large_file_corrupt_part: Option<u64>,
    /// The large-file cleanup script cannot remove its working folder (exit code 4).
    pub large_file_cleanup_fails: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointFaults {
    pub p429: f64,
    /// Of the injected 429s, the chance that `Retry-After` is left out.
    pub p429_without_retry_after: f64,
    pub p500: f64,
    pub p503: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Client {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// Shown as the actions' `requestor`.
    pub requestor: String,
    /// The application permissions its tenant granted (admin consent), carried in its tokens'
    /// `roles` claim; each API answers 403 without the permission Defender documents for it.
    pub roles: Vec<String>,
}

/// The application permissions the pipeline asks for: start and collect a live response, read
/// machine actions, keep the library.
pub const PIPELINE_ROLES: [&str; 3] =
    ["Machine.LiveResponse", "Machine.Read.All", "Library.Manage"];

impl Default for Client {
    fn default() -> Self {
        Self {
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            client_id: "00000000-0000-0000-0000-000000000002".into(),
            client_secret: "sim-secret".into(),
            requestor: "live-response-pipeline".into(),
            roles: PIPELINE_ROLES.iter().map(|r| r.to_string()).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Device {
    pub machine_id: String,
    pub dns_name: String,
    pub os_platform: String,
    pub online: bool,
    /// An offline device comes online this many simulated seconds after the simulator starts.
    pub online_after_secs: Option<u64>,
    /// How long each command takes on this device, unless the file or script says otherwise.
    pub command_secs: u64,
    pub files: Vec<DeviceFile>,
}

impl Default for Device {
    fn default() -> Self {
        Self {
            machine_id: String::new(),
            dns_name: String::new(),
            os_platform: "Windows11".into(),
            online: true,
            online_after_secs: None,
            command_secs: 10,
            files: Vec::new(),
        }
    }
}

impl Device {
    pub fn file(&self, path: &str) -> Option<&DeviceFile> {
        // Windows paths compare without regard to case.
        self.files
            .iter()
            .find(|f| f.path.eq_ignore_ascii_case(path))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceFile {
    pub path: String,
    pub size: u64,
    /// Simulated seconds a GetFile of it takes (default: the device's command_secs).
    pub secs: Option<u64>,
}

/// How a script behaves when a RunScript runs it. It runs only if the library holds a file of
/// that name when the session is submitted (seeded under `library` or uploaded through the API);
/// a script in the library with no entry here runs with exit code 0 and the output
/// `"{name} sha256={sha256} args={args}"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Script {
    pub name: String,
    pub exit_code: i64,
    /// Standard output; `{args}` is replaced by the Args parameter, `{machine}` by the device's DNS
    /// name and `{sha256}` by the hex SHA-256 of the library file that ran (so a transcript tells
    /// which version of the script ran). An entry also describes the script's versioned names
    /// (`triage.ps1` describes `triage-6bf94f0d21df.ps1`; see [`SimConfig::script`]).
    pub output: String,
    pub errors: String,
    /// Simulated seconds a run takes (default: the device's command_secs).
    pub secs: Option<u64>,
}

/// A file the live response library starts with, as an upload would leave it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibrarySeed {
    pub name: String,
    /// The file's content; the library lists its SHA-256 (of the UTF-8 bytes), so a test can seed
    /// a stale version of a file by giving other content.
    pub content: String,
    pub description: String,
    pub has_parameters: bool,
    pub parameters_description: String,
}

impl LibrarySeed {
    /// The hex SHA-256 of `content`, as the library lists it.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.content.as_bytes()))
    }
}

#[cfg(test)]
mod versioned_tests {
    use super::*;

    #[test]
    fn a_versioned_name_finds_its_script() {
        assert_eq!(
            unversioned("triage-6bf94f0d21df.ps1").as_deref(),
            Some("triage.ps1")
        );
        assert_eq!(
            unversioned("README-6bf94f0d21df").as_deref(),
            Some("README")
        );
        assert_eq!(unversioned("triage.ps1"), None);
        assert_eq!(unversioned("my-tool.ps1"), None);
        assert_eq!(unversioned("x-6bf94f0d21dg.ps1"), None);
        let c = SimConfig {
            scripts: vec![Script {
                name: "triage.ps1".into(),
                ..Script::default()
            }],
            ..SimConfig::default()
        };
        assert!(c.script("TRIAGE-6bf94f0d21df.ps1").is_some());
        assert!(c.script("other-6bf94f0d21df.ps1").is_none());
    }
}
