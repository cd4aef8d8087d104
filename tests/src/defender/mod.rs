//! Defender for tests, one home for each kind: [`Scripted`] answers a stage handler called
//! directly from what the test scripted; [`Model`] runs actions on a manual clock for tests and
//! benchmarks that drive the stages through simulated time (with seeded faults); and
//! [`LosesFirstAnswer`] wraps a real client (of the simulator) to lose the answer to a submission
//! Defender did receive. The simulator (`testkit::sim`) is the real HTTP Defender.

mod model;
mod scripted;

pub use model::{Call as ModelCall, Device, Model};
pub use scripted::{Call, Hook, Scripted, action};

use shared::defender::{
    ActionFilter, ActionId, DefenderError, DownloadLink, LiveResponseRequest, MachineAction,
    MachineId,
};
use shared::ports::Defender;
use std::sync::atomic::{AtomicBool, Ordering};

/// Passes every call through to `inner`, but loses the answer to the first submission Defender
/// accepted: Defender made the action, the pipeline hears a dropped connection.
pub struct LosesFirstAnswer<D> {
    inner: D,
    lost: AtomicBool,
}

impl<D> LosesFirstAnswer<D> {
    /// `inner`, losing its first submission's answer.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            lost: AtomicBool::new(false),
        }
    }
}

impl<D: Defender> Defender for LosesFirstAnswer<D> {
    async fn run_live_response(
        &self,
        m: &MachineId,
        r: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        let action = self.inner.run_live_response(m, r).await?;
        // The first submission Defender accepted: its answer is lost.
        if !self.lost.swap(true, Ordering::SeqCst) {
            return Err(DefenderError::Transient {
                reason: "connection reset after the request was sent".into(),
            });
        }
        Ok(action)
    }
    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        self.inner.get_machine_action(id).await
    }
    async fn list_machine_actions(
        &self,
        f: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        self.inner.list_machine_actions(f).await
    }
    async fn result_download_link(
        &self,
        id: &ActionId,
        index: u32,
    ) -> Result<DownloadLink, DefenderError> {
        self.inner.result_download_link(id, index).await
    }
    async fn cancel_machine_action(
        &self,
        id: &ActionId,
        c: &str,
    ) -> Result<MachineAction, DefenderError> {
        self.inner.cancel_machine_action(id, c).await
    }
}
