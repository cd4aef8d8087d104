//! The manifest signer: an asymmetric KMS key (`ECC_NIST_P256`, `SIGN_VERIFY`), signing the raw
//! statement with `ECDSA_SHA_256` (KMS hashes it). Also what `lrctl` uses to verify with KMS and to
//! export the public key for offline verification.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};

use crate::config::{ConfigError, Env, required};
use crate::ports::{BoxFuture, NotaryError, Signer};

/// The key the manifests are signed with, from `SIGNING_KEY_ID` (its ARN, as the template sets it).
pub fn signing_key_id(env: &dyn Env) -> Result<String, ConfigError> {
    required(
        env,
        "SIGNING_KEY_ID",
        "the ARN of the KMS key (ECC_NIST_P256, SIGN_VERIFY) that signs manifests",
    )
}

/// A KMS key as a [`Signer`].
pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    key_id: String,
}

fn kms_err<E: std::error::Error>(e: E) -> NotaryError {
    NotaryError(aws_sdk_kms::error::DisplayErrorContext(e).to_string())
}

impl KmsSigner {
    /// The key `key_id` through `client`.
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
        }
    }

    /// Whether KMS says `signature` is the key's signature of `message`.
    pub async fn verify_with_kms(
        &self,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, NotaryError> {
        match self
            .client
            .verify()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signature(Blob::new(signature))
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
        {
            Ok(out) => Ok(out.signature_valid()),
            Err(e) => {
                // KMS answers an invalid signature with KMSInvalidSignatureException.
                if e.as_service_error()
                    .is_some_and(|s| s.is_kms_invalid_signature_exception())
                {
                    Ok(false)
                } else {
                    Err(kms_err(e))
                }
            }
        }
    }

    /// The key's public key, DER (SubjectPublicKeyInfo).
    pub async fn public_key(&self) -> Result<Vec<u8>, NotaryError> {
        let out = self
            .client
            .get_public_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(kms_err)?;
        out.public_key()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| NotaryError(format!("KMS returned no public key for {}", self.key_id)))
    }
}

impl Signer for KmsSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, NotaryError>> {
        Box::pin(async move {
            let out = self
                .client
                .sign()
                .key_id(&self.key_id)
                .message(Blob::new(message))
                .message_type(MessageType::Raw)
                .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
                .send()
                .await
                .map_err(kms_err)?;
            out.signature()
                .map(|b| b.as_ref().to_vec())
                .ok_or_else(|| NotaryError("KMS returned no signature".into()))
        })
    }

    fn verify<'a>(
        &'a self,
        message: &'a [u8],
        der: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, NotaryError>> {
        Box::pin(async move {
            // Bytes that are no DER ECDSA signature are no signature of this key: answered here,
            // not sent to KMS (which would refuse them as a malformed request, read as an outage).
            if p256::ecdsa::Signature::from_der(der).is_err() {
                return Ok(false);
            }
            self.verify_with_kms(message, der).await
        })
    }
}
