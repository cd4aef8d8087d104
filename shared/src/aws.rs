//! AWS adapters: the SDK configuration (honouring `AWS_ENDPOINT_URL` for the local stack) and the
//! Defender credentials read from Secrets Manager.

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::defender::{CredentialSource, Credentials, DefenderError};

/// The shared SDK configuration: region, credentials and endpoint from the environment.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// An S3 client; path-style addressing when the endpoint is overridden (moto on loopback has no
/// per-bucket host names).
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let builder =
        aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some());
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// `{tenant_id, client_id, client_secret}` from a Secrets Manager secret.
#[derive(Clone)]
pub struct SecretsManagerCredentials {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerCredentials {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
        }
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
        Credentials::from_json(text).map_err(|e| match e {
            DefenderError::Credentials(m) => {
                DefenderError::Credentials(format!("secret {}: {m}", self.secret_id))
            }
            other => other,
        })
    }
}
