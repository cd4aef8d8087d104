//! A scripted Defender for stage handlers called directly: it holds machine actions and answers
//! reads and listings from them (a listing filtered by status and type as Defender filters it);
//! answers submissions from a script, or accepts them; answers result links with a scripted link;
//! accepts cancels that change nothing when told to; and runs a test's hook before answering any
//! call (to hold a call at a gate, let time pass, or change the world meanwhile). Anything a test
//! did not script is answered with an error naming what was asked (never a panic inside the stage:
//! a stage may well absorb such an error, as it would Defender's), and recorded: the test fails
//! when the scripted Defender is dropped with unscripted calls unless it read them
//! ([`Scripted::take_unscripted`]).

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

/// Runs before a call is answered (a submission's, a read's and a link's answer already chosen; a
/// listing's and a cancel's taken after it ran).
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
    /// Calls the test did not script, in order.
    unscripted_calls: Mutex<Vec<String>>,
}

impl Scripted {
    /// Defender whose tenant holds `actions`.
    pub fn with(actions: Vec<MachineAction>) -> Self {
        let s = Self::default();
        *s.actions.lock().unwrap() = actions;
        s
    }

    /// Defender that answers the submissions it is sent with `answers`, in turn.
    pub fn answering_submissions(answers: Vec<Result<MachineAction, DefenderError>>) -> Self {
        let s = Self::default();
        *s.submissions.lock().unwrap() = answers.into();
        s
    }

    /// Defender that accepts every submission (and lists no earlier action).
    pub fn accepting_submissions() -> Self {
        let mut s = Self::default();
        s.accepts_submissions = true;
        s
    }

    /// Defender that answers reads with `reads`, in turn.
    pub fn answering_reads(reads: Vec<MachineAction>) -> Self {
        Self::default().answering(reads)
    }

    /// The same Defender, answering its next reads with `reads`, in turn (then from `actions`).
    pub fn answering(self, reads: Vec<MachineAction>) -> Self {
        *self.reads.lock().unwrap() = reads.into();
        self
    }

    /// Defender that answers every result link with `link`.
    pub fn answering_links(link: DownloadLink) -> Self {
        let mut s = Self::default();
        s.link = Some(link);
        s
    }

    /// The same Defender, accepting cancels (each changes nothing).
    pub fn accepting_cancels(mut self) -> Self {
        self.accepts_cancels = true;
        self
    }

    /// The same Defender, running `hook` before it answers each call.
    pub fn before_each_call(
        mut self,
        hook: impl Fn(Call) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// The submissions asked so far.
    pub fn requests(&self) -> Vec<LiveResponseRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The calls it had no answer for (clearing them: a test that expects some says so).
    pub fn take_unscripted(&self) -> Vec<String> {
        std::mem::take(&mut *self.unscripted_calls.lock().unwrap())
    }

    fn unscripted(&self, what: &str) -> DefenderError {
        self.unscripted_calls.lock().unwrap().push(what.to_string());
        DefenderError::InvalidResponse(format!("the scripted Defender has no answer for {what}"))
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

impl Drop for Scripted {
    fn drop(&mut self) {
        let unscripted = self.take_unscripted();
        if !unscripted.is_empty() && !std::thread::panicking() {
            panic!("the stage made calls the test did not script: {unscripted:?}");
        }
    }
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
            None => Err(self.unscripted("a submission")),
        };
        self.before(Call::Submit { n }).await;
        answer
    }

    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        let n = self.reads_made.fetch_add(1, Ordering::SeqCst);
        let scripted = self.reads.lock().unwrap().pop_front();
        let known = || {
            let actions = self.actions.lock().unwrap();
            actions.iter().find(|a| &a.id == id).cloned()
        };
        let answer = match scripted.or_else(known) {
            Some(action) => Ok(action),
            None => {
                self.unscripted(&format!("a read of action {id}"));
                Err(not_found(id))
            }
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
        self.link
            .clone()
            .ok_or_else(|| self.unscripted("a result link"))
    }

    async fn cancel_machine_action(
        &self,
        id: &ActionId,
        _: &str,
    ) -> Result<MachineAction, DefenderError> {
        self.before(Call::Cancel).await;
        if !self.accepts_cancels {
            return Err(self.unscripted("a cancel"));
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
