//! The live response library through the API: list, upload (multipart, 20 MB at most) and
//! delete the scripts and files that playbooks run and put. Apart from the machine actions the
//! stages use, for the tools that keep the library in step with the playbooks.

use tracing::Instrument;

use super::auth::CredentialSource;
use super::client::DefenderClient;
use super::error::DefenderError;
use super::model::LibraryFile;

/// Options for the library upload.
#[derive(Debug, Clone, Default)]
pub struct LibraryUpload {
    /// The name scripts and `PutFile` commands will use; Defender's library is flat.
    pub file_name: String,
    /// The file's bytes (20 MB at most); shared, not copied, per upload.
    pub content: bytes::Bytes,
    /// Shown in the portal's library list.
    pub description: String,
    /// What the script's arguments mean; sent only when `Some`.
    pub parameters_description: Option<String>,
    /// Whether the script takes `Args`.
    pub has_parameters: bool,
    /// Replace a file of the same name; when `false`, an existing name makes the upload fail.
    pub override_if_exists: bool,
}

impl<C: CredentialSource> DefenderClient<C> {
    /// Every file in the tenant's library. An entry that cannot be read is left out (and logged):
    /// one odd entry does not hide the others.
    pub async fn list_library(&self) -> Result<Vec<LibraryFile>, DefenderError> {
        #[derive(serde::Deserialize)]
        struct Page {
            value: Vec<serde_json::Value>,
        }
        let url = self.url("/api/libraryfiles");
        let page: Page = self.json("library list", |h| h.get(&url)).await?;
        Ok(page
            .value
            .into_iter()
            .filter_map(|v| match serde_json::from_value::<LibraryFile>(v) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "a library entry Defender listed could not be read; left out");
                    None
                }
            })
            .collect())
    }

    /// Uploads one file as multipart form data and returns the entity Defender made of it.
    pub async fn upload_library_file(
        &self,
        upload: &LibraryUpload,
    ) -> Result<LibraryFile, DefenderError> {
        let url = self.url("/api/libraryfiles");
        let span =
            tracing::info_span!("defender.upload_library_file", file_name = %upload.file_name);
        self.json("library upload", |h| {
            let mut form = reqwest::multipart::Form::new()
                .part(
                    "file",
                    reqwest::multipart::Part::stream_with_length(
                        reqwest::Body::from(upload.content.clone()),
                        upload.content.len() as u64,
                    )
                    .file_name(upload.file_name.clone()),
                )
                .text("Description", upload.description.clone())
                .text("HasParameters", upload.has_parameters.to_string())
                .text("OverrideIfExists", upload.override_if_exists.to_string());
            if let Some(p) = &upload.parameters_description {
                form = form.text("ParametersDescription", p.clone());
            }
            h.post(&url).multipart(form)
        })
        .instrument(span)
        .await
    }

    /// Deletes the library file `file_name` (URL-encoded into the path).
    pub async fn delete_library_file(&self, file_name: &str) -> Result<(), DefenderError> {
        let name: String = url::form_urlencoded::byte_serialize(file_name.as_bytes()).collect();
        let url = self.url(&format!("/api/libraryfiles/{name}"));
        self.send(|h| h.delete(&url)).await.map(|_| ())
    }
}
