//! A Defender modelled on a manual clock, for tests and benchmarks that drive the stages through
//! simulated time: an action is made when it is submitted and runs on its device (an online device
//! finishes it a set time after it was posted; an offline one never picks it up, and Defender
//! times it out after three days); a device runs one action at a time, as Defender's
//! `ActiveRequestAlreadyExists` says; listings filter as Defender's `$filter` does; result links
//! lapse 30 minutes after they are issued. Every call is recorded with its time, so a test can
//! count them against Defender's limits. Optionally, faults of every kind Defender answers with
//! (429 with and without `Retry-After`, 5xx, 401/403, 404, an unreadable body, a submission accepted
//! but its answer lost, a refused cancel), drawn from a seeded generator so a schedule replays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shared::clock::{Clock, ManualClock};
use shared::defender::{
    ActionFilter, ActionId, ActionStatus, Command, CommandResult, CommandStatus, DefenderError,
    DownloadLink, LiveResponseRequest, MachineAction, MachineId,
};
use shared::ports::Defender;
use shared::secret::Secret;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::seeded::Rng;

/// How a device behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Device {
    /// Picks an action up at once and finishes it this long after it was posted.
    Online {
        /// The action's run time.
        runs_for: Duration,
    },
    /// Never picks an action up: Defender times it out after three days.
    Offline,
}

/// A call Defender received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /machines/{id}/runliveresponse`.
    Submit,
    /// `GET /machineactions/{id}`.
    Get,
    /// `GET /machineactions?$filter=…`.
    List,
    /// `GET /machineactions/{id}/GetLiveResponseResultDownloadLink(index=…)`.
    Link,
    /// `POST /machineactions/{id}/cancel`.
    Cancel,
}

struct Action {
    id: ActionId,
    machine: MachineId,
    comment: String,
    posted: OffsetDateTime,
    commands: Vec<Command>,
    cancelled: bool,
}

struct Faults {
    rng: Mutex<Rng>,
    rate: f64,
}

/// Defender as a model of its actions on `clock`.
pub struct Model<'a> {
    clock: &'a ManualClock,
    devices: HashMap<MachineId, Device>,
    faults: Option<Faults>,
    actions: Mutex<Vec<Action>>,
    calls: Mutex<Vec<(Call, OffsetDateTime)>>,
    /// Machines and actions the model does not know that the pipeline asked about.
    strangers: Mutex<Vec<String>>,
}

impl<'a> Model<'a> {
    /// Defender for these devices, answering every call (a device not listed is offline, and
    /// recorded as a stranger).
    pub fn new(clock: &'a ManualClock, devices: HashMap<MachineId, Device>) -> Self {
        Self {
            clock,
            devices,
            faults: None,
            actions: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            strangers: Mutex::new(Vec::new()),
        }
    }

    /// The same, answering a share `rate` of calls with a fault drawn from `seed`'s generator.
    pub fn with_faults(self, seed: u64, rate: f64) -> Self {
        Self {
            faults: Some(Faults {
                rng: Mutex::new(Rng::new(seed)),
                rate,
            }),
            ..self
        }
    }

    /// When each call of these kinds reached Defender, in order.
    pub fn calls(&self, kinds: &[Call]) -> Vec<OffsetDateTime> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| kinds.contains(c))
            .map(|(_, at)| *at)
            .collect()
    }

    /// Every action made so far, as Defender shows it now.
    pub fn actions(&self) -> Vec<MachineAction> {
        let actions = self.actions.lock().unwrap();
        actions.iter().map(|a| self.view(a)).collect()
    }

    /// The first action made, and when it was posted (none yet: `None`).
    pub fn first(&self) -> Option<(ActionId, OffsetDateTime)> {
        let actions = self.actions.lock().unwrap();
        actions.first().map(|a| (a.id.clone(), a.posted))
    }

    /// When action `id` ends on its device (`None`: unknown, or its device never runs it).
    pub fn end_of(&self, id: &ActionId) -> Option<OffsetDateTime> {
        let actions = self.actions.lock().unwrap();
        let a = actions.iter().find(|a| &a.id == id)?;
        match self.device(&a.machine) {
            Device::Online { runs_for } => Some(a.posted + runs_for),
            Device::Offline => None,
        }
    }

    /// Machines and actions the pipeline asked about that the model never had: a pipeline that
    /// names the wrong one would otherwise look like Defender's 404.
    pub fn strangers(&self) -> Vec<String> {
        self.strangers.lock().unwrap().clone()
    }

    fn device(&self, machine: &MachineId) -> Device {
        self.devices.get(machine).copied().unwrap_or_else(|| {
            self.stranger(format!("machine {machine}"));
            Device::Offline
        })
    }

    fn stranger(&self, what: String) {
        self.strangers.lock().unwrap().push(what);
    }

    fn unknown(&self, id: &ActionId) -> DefenderError {
        self.stranger(format!("action {id}"));
        DefenderError::NotFound {
            code: "ResourceNotFound".into(),
            message: format!("action {id}"),
        }
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push((call, self.clock.now()));
    }

    fn fault(&self) -> bool {
        self.faults
            .as_ref()
            .is_some_and(|f| f.rng.lock().unwrap().chance(f.rate))
    }

    fn pick(&self, n: u64) -> u64 {
        self.faults
            .as_ref()
            .map_or(0, |f| f.rng.lock().unwrap().below(n))
    }

    /// A fault of a kind a GET can meet, or none.
    fn get_fault(&self) -> Result<(), DefenderError> {
        if !self.fault() {
            return Ok(());
        }
        Err(match self.pick(6) {
            0 => DefenderError::RateLimited {
                retry_after: Some(Duration::from_secs(5)),
            },
            1 => DefenderError::RateLimited { retry_after: None },
            2 => DefenderError::Transient {
                reason: "503".into(),
            },
            3 => DefenderError::Unauthorized {
                status: 403,
                message: "forbidden".into(),
            },
            4 => DefenderError::NotFound {
                code: "ResourceNotFound".into(),
                message: "no".into(),
            },
            _ => DefenderError::InvalidResponse("truncated body".into()),
        })
    }

    fn status(&self, a: &Action) -> ActionStatus {
        let age = self.clock.now() - a.posted;
        if a.cancelled {
            return ActionStatus::Cancelled;
        }
        match self.device(&a.machine) {
            Device::Offline if age > time::Duration::days(3) => ActionStatus::TimeOut,
            Device::Offline => ActionStatus::Pending,
            Device::Online { runs_for } if age >= runs_for => ActionStatus::Succeeded,
            Device::Online { .. } => ActionStatus::InProgress,
        }
    }

    fn view(&self, a: &Action) -> MachineAction {
        let status = self.status(a);
        let done = status == ActionStatus::Succeeded;
        let end = match self.device(&a.machine) {
            Device::Online { runs_for } if done => Some(a.posted + runs_for),
            _ => None,
        };
        let ts = |t: OffsetDateTime| t.format(&Rfc3339).ok();
        MachineAction {
            id: a.id.clone(),
            kind: Some("LiveResponse".into()),
            requestor: Some("pipeline".into()),
            requestor_comment: Some(a.comment.clone()),
            status,
            machine_id: a.machine.clone(),
            computer_dns_name: None,
            creation_date_time_utc: ts(a.posted),
            last_update_date_time_utc: ts(end.unwrap_or(a.posted)),
            cancellation_requestor: None,
            cancellation_comment: None,
            cancellation_date_time_utc: None,
            commands: a
                .commands
                .iter()
                .enumerate()
                .map(|(i, c)| CommandResult {
                    index: i as u32,
                    start_time: ts(a.posted),
                    end_time: end.and_then(ts),
                    command_status: if done {
                        CommandStatus::Completed
                    } else {
                        CommandStatus::Created
                    },
                    errors: vec![],
                    command: c.clone(),
                })
                .collect(),
        }
    }
}

impl Defender for Model<'_> {
    async fn run_live_response(
        &self,
        machine: &MachineId,
        request: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        self.record(Call::Submit);
        if self.fault() {
            return Err(match self.pick(2) {
                0 => DefenderError::RateLimited { retry_after: None },
                _ => DefenderError::Transient {
                    reason: "502 before the action was made".into(),
                },
            });
        }
        let mut actions = self.actions.lock().unwrap();
        if actions
            .iter()
            .any(|a| &a.machine == machine && !self.status(a).is_final())
        {
            return Err(DefenderError::DeviceBusy {
                message: "ActiveRequestAlreadyExists".into(),
            });
        }
        let a = Action {
            id: ActionId::parse(&format!("00000000-0000-4000-8000-{:012}", actions.len()))
                .expect("a well-formed action id"),
            machine: machine.clone(),
            comment: request.comment.clone(),
            posted: self.clock.now(),
            commands: request.commands.clone(),
            cancelled: false,
        };
        let view = self.view(&a);
        actions.push(a);
        drop(actions);
        if self.fault() {
            // Accepted, but the answer is lost or unreadable.
            return Err(match self.pick(2) {
                0 => DefenderError::Transient {
                    reason: "connection reset after the request was sent".into(),
                },
                _ => DefenderError::InvalidResponse("body is not JSON".into()),
            });
        }
        Ok(view)
    }

    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        self.record(Call::Get);
        self.get_fault()?;
        let actions = self.actions.lock().unwrap();
        match actions.iter().find(|a| &a.id == id) {
            Some(a) => Ok(self.view(a)),
            None => Err(self.unknown(id)),
        }
    }

    async fn list_machine_actions(
        &self,
        f: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        self.record(Call::List);
        self.get_fault()?;
        let actions = self.actions.lock().unwrap();
        Ok(actions
            .iter()
            .filter(|a| f.machine_id.as_ref().is_none_or(|m| m == &a.machine))
            .filter(|a| f.created_since.is_none_or(|s| a.posted >= s))
            .map(|a| self.view(a))
            .filter(|v| f.status.as_ref().is_none_or(|s| s == &v.status))
            .collect())
    }

    async fn result_download_link(
        &self,
        id: &ActionId,
        index: u32,
    ) -> Result<DownloadLink, DefenderError> {
        self.record(Call::Link);
        self.get_fault()?;
        let lapses = (self.clock.now() + time::Duration::minutes(30))
            .format(&Rfc3339)
            .expect("a time Rfc3339 can write");
        Ok(DownloadLink {
            url: Secret::new(format!(
                "https://acct.blob.core.windows.net/c/{id}/{index}?se={}&sig=x",
                lapses.replace(':', "%3A")
            )),
            expires_at: None,
        })
    }

    async fn cancel_machine_action(
        &self,
        id: &ActionId,
        _comment: &str,
    ) -> Result<MachineAction, DefenderError> {
        self.record(Call::Cancel);
        if self.fault() {
            return Err(DefenderError::Rejected {
                status: 400,
                code: "InvalidRequest".into(),
                message: "cannot cancel".into(),
            });
        }
        let mut actions = self.actions.lock().unwrap();
        let Some(a) = actions.iter_mut().find(|a| &a.id == id) else {
            return Err(self.unknown(id));
        };
        if !self.status(a).is_final() {
            a.cancelled = true;
        }
        Ok(self.view(a))
    }
}
