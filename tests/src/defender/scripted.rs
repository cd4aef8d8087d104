//! A scripted Defender for stage handlers called directly: it holds machine actions and answers
//! reads and listings from them (a listing filtered by status and type as Defender filters it);
//! answers submissions from a script, or accepts them; answers result links with a scripted link;
//! accepts cancels that change nothing when told to; and runs a test's hook before answering any
//! call (to hold a call at a gate, let time pass, or change the world meanwhile). Anything a test
//! did not script is an error naming what was asked, never a panic inside the stage.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use shared::defender::{
    ActionFilter, ActionId, ActionStatus, Command, CommandResult, CommandStatus, DefenderError,
    DownloadLink, LiveResponseRequest, MachineAction, MachineId,
};
use shared::ports::{BoxFuture, Defender};

/// A call the scripted Defender received, as its hook sees it.
#[derive(Debug, Clone)]
pub enum Call {
    /// A submission (the `n`-th, from 0).
    Submit {
        /// Submissions before this one.
        n: u32,
    },
    /// A read of one action (the `n`-th, from 0).
    Read {
        /// Reads before this one.
        n: u32,
    },
    /// A listing, with its filter.
    List(ActionFilter),
    /// A result link.
    Link,
    /// A cancel.
    Cancel,
}

/// Runs before a call is answered (its answer already chosen).
pub type Hook = Box<dyn Fn(Call) -> BoxFuture<'static, ()> + Send + Sync>;

/// Defender as a test scripts it.
#[derive(Default)]
pub struct Scripted {
    /// The tenant's machine actions, for reads and listings.
    pub actions: Mutex<Vec<MachineAction>>,
    /// Answers to reads, in turn, before `actions` is consulted.
    pub reads: Mutex<VecDeque<MachineAction>>,
    /// Answers to submissions, in turn.
    pub submissions: Mutex<VecDeque<Result<MachineAction, DefenderError>>>,
    /// When set, a submission the script has no answer for is accepted: a pending action on the
    /// machine (not added to `actions`: the listing stays what the test put there).
    pub accepts_submissions: bool,
    /// When set, a cancel is accepted and changes nothing (the action as it stands is the answer).
    pub accepts_cancels: bool,
    /// The answer to every result link.
    pub link: Option<DownloadLink>,
    /// Runs before each call is answered.
    pub hook: Option<Hook>,
    /// Every submission asked, in order (scripted or not).
    pub requests: Mutex<Vec<LiveResponseRequest>>,
    /// Reads answered.
    pub reads_made: AtomicU32,
    /// Listings answered.
    pub listings: AtomicU32,
    /// Cancels accepted.
    pub cancels: AtomicU32,
}

impl Scripted {
    /// Defender whose tenant holds `actions`.
    pub fn with(actions: Vec<MachineAction>) -> Self {
        Self {
            actions: Mutex::new(actions),
            ..Self::default()
        }
    }

    /// Defender that answers the submissions it is sent with `answers`, in turn.
    pub fn answering_submissions(answers: Vec<Result<MachineAction, DefenderError>>) -> Self {
        Self {
            submissions: Mutex::new(answers.into()),
            ..Self::default()
        }
    }

    /// Defender that accepts every submission (and lists no earlier action).
    pub fn accepting_submissions() -> Self {
        Self {
            accepts_submissions: true,
            ..Self::default()
        }
    }

    /// Defender that answers reads with `reads`, in turn.
    pub fn answering_reads(reads: Vec<MachineAction>) -> Self {
        Self {
            reads: Mutex::new(reads.into()),
            ..Self::default()
        }
    }

    /// Defender that answers every result link with `link`.
    pub fn answering_links(link: DownloadLink) -> Self {
        Self {
            link: Some(link),
            ..Self::default()
        }
    }

    /// The same Defender, running `hook` before it answers each call.
    pub fn before_each_call(
        self,
        hook: impl Fn(Call) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        Self {
            hook: Some(Box::new(hook)),
            ..self
        }
    }

    /// The submissions asked so far.
    pub fn requests(&self) -> Vec<LiveResponseRequest> {
        self.requests.lock().unwrap().clone()
    }

    async fn before(&self, call: Call) {
        if let Some(hook) = &self.hook {
            hook(call).await;
        }
    }
}

/// A live response action as Defender shows it: `id` on `machine`, in `status`, its commands each
/// in its own status (started and ended when the action did).
pub fn action(
    id: &ActionId,
    machine: &MachineId,
    status: ActionStatus,
    commands: &[(Command, CommandStatus)],
) -> MachineAction {
    MachineAction {
        id: id.clone(),
        kind: Some("LiveResponse".into()),
        requestor: None,
        requestor_comment: None,
        status,
        machine_id: machine.clone(),
        computer_dns_name: None,
        creation_date_time_utc: None,
        last_update_date_time_utc: None,
        cancellation_requestor: None,
        cancellation_comment: None,
        cancellation_date_time_utc: None,
        commands: commands
            .iter()
            .enumerate()
            .map(|(i, (command, status))| CommandResult {
                index: i as u32,
                start_time: None,
                end_time: None,
                command_status: status.clone(),
                errors: vec![],
                command: command.clone(),
            })
            .collect(),
    }
}

fn unscripted(what: &str) -> DefenderError {
    DefenderError::InvalidResponse(format!("the scripted Defender has no answer for {what}"))
}

fn not_found(id: &ActionId) -> DefenderError {
    DefenderError::NotFound {
        code: "ResourceNotFound".into(),
        message: format!("action {id}"),
    }
}

impl Defender for Scripted {
    async fn run_live_response(
        &self,
        machine: &MachineId,
        request: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        let n = {
            let mut requests = self.requests.lock().unwrap();
            requests.push(request.clone());
            requests.len() as u32 - 1
        };
        let scripted = self.submissions.lock().unwrap().pop_front();
        let answer = match scripted {
            Some(answer) => answer,
            None if self.accepts_submissions => {
                let id = ActionId::parse(&format!("7f0a8b9c-1d2e-4f30-8a4b-{n:012}"))
                    .expect("a well-formed action id");
                let mut pending = action(&id, machine, ActionStatus::Pending, &[]);
                pending.requestor_comment = Some(request.comment.clone());
                Ok(pending)
            }
            None => Err(unscripted("a submission")),
        };
        self.before(Call::Submit { n }).await;
        answer
    }

    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        let n = self.reads_made.fetch_add(1, Ordering::SeqCst);
        let scripted = self.reads.lock().unwrap().pop_front();
        let answer = match scripted {
            Some(action) => Ok(action),
            None => self
                .actions
                .lock()
                .unwrap()
                .iter()
                .find(|a| &a.id == id)
                .cloned()
                .ok_or_else(|| not_found(id)),
        };
        self.before(Call::Read { n }).await;
        answer
    }

    async fn list_machine_actions(
        &self,
        filter: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        self.listings.fetch_add(1, Ordering::SeqCst);
        self.before(Call::List(filter.clone())).await;
        Ok(self
            .actions
            .lock()
            .unwrap()
            .iter()
            .filter(|a| {
                filter
                    .machine_id
                    .as_ref()
                    .is_none_or(|m| *m == a.machine_id)
            })
            .filter(|a| filter.status.as_ref().is_none_or(|s| *s == a.status))
            .filter(|a| !filter.live_response_only || a.kind.as_deref() == Some("LiveResponse"))
            .cloned()
            .collect())
    }

    async fn result_download_link(
        &self,
        _: &ActionId,
        _: u32,
    ) -> Result<DownloadLink, DefenderError> {
        self.before(Call::Link).await;
        self.link.clone().ok_or_else(|| unscripted("a result link"))
    }

    async fn cancel_machine_action(
        &self,
        id: &ActionId,
        _: &str,
    ) -> Result<MachineAction, DefenderError> {
        self.before(Call::Cancel).await;
        if !self.accepts_cancels {
            return Err(unscripted("a cancel"));
        }
        self.cancels.fetch_add(1, Ordering::SeqCst);
        self.actions
            .lock()
            .unwrap()
            .iter()
            .find(|a| &a.id == id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }
}
