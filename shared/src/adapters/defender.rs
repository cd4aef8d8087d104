//! The Defender client as the [`Defender`] port the stages call, and as the [`LibraryApi`] submit
//! keeps the live response library in step through.

use crate::defender::{
    ActionFilter, ActionId, CredentialSource, DefenderClient, DefenderError, DownloadLink,
    LibraryFile, LibraryUpload, LiveResponseRequest, MachineAction, MachineId,
};
use crate::ports::{BoxFuture, Defender, LibraryApi};

impl<C: CredentialSource> Defender for DefenderClient<C> {
    async fn run_live_response(
        &self,
        machine: &MachineId,
        request: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        DefenderClient::run_live_response(self, machine, request).await
    }
    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        DefenderClient::get_machine_action(self, id).await
    }
    async fn list_machine_actions(
        &self,
        filter: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        DefenderClient::list_machine_actions(self, filter, Some(1000), None).await
    }
    async fn result_download_link(
        &self,
        id: &ActionId,
        index: u32,
    ) -> Result<DownloadLink, DefenderError> {
        DefenderClient::result_download_link(self, id, index).await
    }
    async fn cancel_machine_action(
        &self,
        id: &ActionId,
        comment: &str,
    ) -> Result<MachineAction, DefenderError> {
        DefenderClient::cancel_machine_action(self, id, comment).await
    }
}

impl<C: CredentialSource> LibraryApi for DefenderClient<C> {
    fn list(&self) -> BoxFuture<'_, Result<Vec<LibraryFile>, DefenderError>> {
        Box::pin(self.list_library())
    }
    fn upload<'a>(
        &'a self,
        upload: &'a LibraryUpload,
    ) -> BoxFuture<'a, Result<LibraryFile, DefenderError>> {
        Box::pin(self.upload_library_file(upload))
    }
}
