//! A scripted Defender for stage handlers called directly: it holds machine actions and answers
//! reads and listings from them (a listing filtered by status and type as Defender filters it),
//! answers submissions from a script, and, when told to, accepts cancels that change nothing; anything a test did not script (a
//! submission, a result link) is an error naming what was asked, never a panic inside the stage.

use std::sync::Mutex;

use shared::defender::{
    ActionFilter, ActionId, DefenderError, DownloadLink, LiveResponseRequest, MachineAction,
    MachineId,
};
use shared::ports::Defender;

/// Defender with these actions.
#[derive(Default)]
pub struct Scripted {
    /// The tenant's machine actions.
    pub actions: Mutex<Vec<MachineAction>>,
    /// Listings answered.
    pub listings: std::sync::atomic::AtomicU32,
    /// When set, a cancel is accepted and changes nothing (the action as it stands is the answer).
    pub accepts_cancels: bool,
    /// Cancels accepted.
    pub cancels: std::sync::atomic::AtomicU32,
    /// Answers to submissions, in turn (none left: the submission is unscripted).
    pub submissions: Mutex<std::collections::VecDeque<Result<MachineAction, DefenderError>>>,
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
}

fn unscripted(what: &str) -> DefenderError {
    DefenderError::InvalidResponse(format!("the scripted Defender has no answer for {what}"))
}

impl Defender for Scripted {
    async fn run_live_response(
        &self,
        _: &MachineId,
        _: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        self.submissions
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Err(unscripted("a submission")))
    }
    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        self.actions
            .lock()
            .unwrap()
            .iter()
            .find(|a| &a.id == id)
            .cloned()
            .ok_or(DefenderError::NotFound {
                code: "ResourceNotFound".into(),
                message: format!("action {id}"),
            })
    }
    async fn list_machine_actions(
        &self,
        filter: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        self.listings
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self
            .actions
            .lock()
            .unwrap()
            .iter()
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
        Err(unscripted("a result link"))
    }
    async fn cancel_machine_action(
        &self,
        id: &ActionId,
        _: &str,
    ) -> Result<MachineAction, DefenderError> {
        if !self.accepts_cancels {
            return Err(unscripted("a cancel"));
        }
        self.cancels
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.get_machine_action(id).await
    }
}
