//! The Defender app's credentials, read from a Secrets Manager secret and never printed.

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::defender::{CredentialSource, Credentials, DefenderError};
use crate::ids::EntraTenantId;

/// `{tenant_id, client_id, client_secret}` from a Secrets Manager secret.
#[derive(Clone)]
pub struct SecretsManagerCredentials {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    entra_tenant: Option<EntraTenantId>,
}

impl SecretsManagerCredentials {
    /// Reads the secret `secret_id` (name or ARN) through `client` on each fetch.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
            entra_tenant: None,
        }
    }

    /// The same secret, its token asked for in `tenant` (a registry's tenant) whatever the
    /// secret's own `tenant_id` says: one multi-tenant application's secret serves every tenant
    /// that consented to it.
    pub fn in_tenant(mut self, tenant: &EntraTenantId) -> Self {
        self.entra_tenant = Some(tenant.clone());
        self
    }
}

impl CredentialSource for SecretsManagerCredentials {
    async fn fetch(&self) -> Result<Credentials, DefenderError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| {
                let code = e.code().unwrap_or_default().to_string();
                let detail = format!(
                    "cannot read secret {}: {}",
                    self.secret_id,
                    DisplayErrorContext(&e)
                );
                match code.as_str() {
                    "ResourceNotFoundException"
                    | "AccessDeniedException"
                    | "DecryptionFailure"
                    | "InvalidRequestException"
                    | "InvalidParameterException" => DefenderError::Credentials(detail),
                    _ => DefenderError::Transient { reason: detail },
                }
            })?;
        let text = out.secret_string().ok_or_else(|| {
            DefenderError::Credentials(format!(
                "secret {} holds no SecretString (binary secrets are not supported)",
                self.secret_id
            ))
        })?;
        let mut credentials = Credentials::from_json(text).map_err(|e| match e {
            DefenderError::Credentials(m) => {
                DefenderError::Credentials(format!("secret {}: {m}", self.secret_id))
            }
            other => other,
        })?;
        if let Some(t) = &self.entra_tenant {
            credentials.tenant_id = t.to_string();
        }
        Ok(credentials)
    }
}
