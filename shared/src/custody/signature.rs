//! The manifest's signature, `evidence/{run}/manifest.sig.json`: a small statement that binds the
//! manifest's exact bytes to its run, signed with an asymmetric KMS key.
//!
//! The statement is kept as the exact text that was signed (a JSON string inside the signature
//! document), so a verifier never has to re-serialize anything: it checks the statement names this
//! run and the SHA-256 of the manifest bytes it holds, then checks the signature over the
//! statement's bytes, with KMS or offline with the exported public key (`lrctl key export`).
//! KMS signs raw messages of up to 4 KB (`MessageType=RAW`, `ECDSA_SHA_256`): the statement is a
//! few hundred bytes, whatever the size of the manifest.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::hash::sha256_hex;
use crate::ids::RunId;

/// The one signing algorithm: ECDSA on P-256 over the SHA-256 of the raw statement.
pub const ALGORITHM: &str = "ECDSA_SHA_256";
/// What a statement is, so that a signature made for something else is never taken for one.
pub const STATEMENT_TYPE: &str = "lr.manifest-statement/v1";
/// KMS's limit on a raw message.
pub const MAX_STATEMENT_BYTES: usize = 4096;

/// What the signature binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The run the manifest is of.
    pub run_id: RunId,
    /// Where the manifest is in the bucket.
    pub manifest_key: String,
    /// SHA-256 of the manifest's exact bytes, in hex.
    pub manifest_sha256: String,
    /// The manifest's length in bytes.
    pub manifest_size: u64,
    /// The KMS key that signs (as configured: its ARN in a deployment).
    pub key_id: String,
    /// When it was signed (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
}

impl Statement {
    /// The statement for these manifest bytes.
    pub fn new(
        run_id: &RunId,
        manifest_key: &str,
        manifest: &[u8],
        key_id: &str,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            kind: STATEMENT_TYPE.into(),
            run_id: run_id.clone(),
            manifest_key: manifest_key.into(),
            manifest_sha256: sha256_hex(manifest),
            manifest_size: manifest.len() as u64,
            key_id: key_id.into(),
            signed_at: now,
        }
    }
}

/// `manifest.sig.json`: the statement's exact text, the key, the algorithm and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// Format version (1).
    pub v: u32,
    /// The statement, as the exact text that was signed.
    pub statement: String,
    /// The key that signed (the same as the statement's).
    pub key_id: String,
    /// [`ALGORITHM`].
    pub algorithm: String,
    /// The DER-encoded signature, base64.
    pub signature: String,
}

impl ManifestSignature {
    /// The document for `statement` (already serialized: these are the bytes signed) and its
    /// DER signature.
    pub fn new(statement_text: String, key_id: &str, der: &[u8]) -> Self {
        Self {
            v: 1,
            statement: statement_text,
            key_id: key_id.into(),
            algorithm: ALGORITHM.into(),
            signature: base64::engine::general_purpose::STANDARD.encode(der),
        }
    }

    /// The signature's DER bytes.
    pub fn der(&self) -> Result<Vec<u8>, CustodyError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|e| CustodyError::Unreadable(format!("signature is not base64: {e}")))
    }
}

/// What a verification found wrong; each says which part differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustodyError {
    /// The signature document or its statement does not parse.
    #[error("the signature document is unreadable: {0}")]
    Unreadable(String),
    /// The statement is not about this run or this manifest key.
    #[error("the signature is for {found}, not {expected}")]
    WrongSubject {
        /// What the verifier holds.
        expected: String,
        /// What the statement names.
        found: String,
    },
    /// The manifest's bytes are not those that were signed.
    #[error("manifest SHA-256 is {actual}, the signed statement says {signed}")]
    ManifestChanged {
        /// The SHA-256 of the manifest bytes read now.
        actual: String,
        /// The SHA-256 the statement binds.
        signed: String,
    },
    /// Not the algorithm this pipeline signs with.
    #[error("algorithm {0} is not {ALGORITHM}")]
    Algorithm(String),
    /// The document's key is not the statement's key.
    #[error("the document names key {document}, the statement key {statement}")]
    KeyMismatch {
        /// The document's `key_id`.
        document: String,
        /// The statement's `key_id`.
        statement: String,
    },
    /// The signature does not verify with the key.
    #[error("the signature does not verify with key {0}")]
    BadSignature(String),
    /// The public key cannot be read.
    #[error("public key: {0}")]
    PublicKey(String),
}

/// Checks everything but the signature itself: the document parses, names this run and manifest
/// key, and binds exactly `manifest` (its bytes as read now). Returns the statement.
pub fn check_statement(
    doc: &ManifestSignature,
    run_id: &RunId,
    manifest_key: &str,
    manifest: &[u8],
) -> Result<Statement, CustodyError> {
    if doc.algorithm != ALGORITHM {
        return Err(CustodyError::Algorithm(doc.algorithm.clone()));
    }
    let st: Statement = serde_json::from_str(&doc.statement)
        .map_err(|e| CustodyError::Unreadable(format!("statement: {e}")))?;
    if st.kind != STATEMENT_TYPE {
        return Err(CustodyError::Unreadable(format!(
            "statement type {:?}, not {STATEMENT_TYPE}",
            st.kind
        )));
    }
    if st.key_id != doc.key_id {
        return Err(CustodyError::KeyMismatch {
            document: doc.key_id.clone(),
            statement: st.key_id,
        });
    }
    if &st.run_id != run_id || st.manifest_key != manifest_key {
        return Err(CustodyError::WrongSubject {
            expected: format!("run {run_id} ({manifest_key})"),
            found: format!("run {} ({})", st.run_id, st.manifest_key),
        });
    }
    let actual = sha256_hex(manifest);
    if actual != st.manifest_sha256 || manifest.len() as u64 != st.manifest_size {
        return Err(CustodyError::ManifestChanged {
            actual,
            signed: st.manifest_sha256,
        });
    }
    Ok(st)
}

/// Verifies the document's signature over its statement with a P-256 public key, offline.
pub fn verify_offline(doc: &ManifestSignature, key: &VerifyingKey) -> Result<(), CustodyError> {
    let der = doc.der()?;
    let sig = Signature::from_der(&der)
        .map_err(|e| CustodyError::Unreadable(format!("signature is not DER ECDSA: {e}")))?;
    key.verify(doc.statement.as_bytes(), &sig)
        .map_err(|_| CustodyError::BadSignature(doc.key_id.clone()))
}

/// A public key from KMS's DER (`GetPublicKey`) or a PEM file (`lrctl key export`).
pub fn public_key(bytes: &[u8]) -> Result<VerifyingKey, CustodyError> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.contains("-----BEGIN PUBLIC KEY-----")
    {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| CustodyError::PublicKey(format!("not a P-256 PEM public key: {e}")));
    }
    VerifyingKey::from_public_key_der(bytes)
        .map_err(|e| CustodyError::PublicKey(format!("not a P-256 DER public key: {e}")))
}

/// The PEM text of a public key, for `lrctl key export`.
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, CustodyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| CustodyError::PublicKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn signed(manifest: &[u8]) -> (RunId, ManifestSignature) {
        let run = RunId::derive("a", "b", "c", "d");
        let st = Statement::new(
            &run,
            "evidence/x/manifest.json",
            manifest,
            "k1",
            OffsetDateTime::UNIX_EPOCH,
        );
        let text = serde_json::to_string(&st).unwrap();
        let sig: Signature = key().sign(text.as_bytes());
        (
            run,
            ManifestSignature::new(text, "k1", sig.to_der().as_bytes()),
        )
    }

    #[test]
    fn a_signature_binds_the_manifest_bytes_the_run_and_the_key() {
        let (run, doc) = signed(b"{\"a\":1}");
        let pk = *key().verifying_key();
        check_statement(&doc, &run, "evidence/x/manifest.json", b"{\"a\":1}").unwrap();
        verify_offline(&doc, &pk).unwrap();
        // One byte of the manifest changed.
        assert!(matches!(
            check_statement(&doc, &run, "evidence/x/manifest.json", b"{\"a\":2}"),
            Err(CustodyError::ManifestChanged { .. })
        ));
        // Another run's manifest.
        let other = RunId::derive("a", "b", "c", "e");
        assert!(matches!(
            check_statement(&doc, &other, "evidence/x/manifest.json", b"{\"a\":1}"),
            Err(CustodyError::WrongSubject { .. })
        ));
        // The statement edited (its hash made to match something else) breaks the signature.
        let mut edited = doc.clone();
        edited.statement = edited.statement.replace("\"k1\"", "\"k2\"");
        edited.key_id = "k2".into();
        assert!(matches!(
            verify_offline(&edited, &pk),
            Err(CustodyError::BadSignature(_))
        ));
        // Another key's signature.
        let stranger = SigningKey::from_slice(&[9u8; 32]).unwrap();
        assert!(verify_offline(&doc, stranger.verifying_key()).is_err());
        // Garbage where the signature was.
        let mut junk = doc.clone();
        junk.signature = "AAAA".into();
        assert!(matches!(
            verify_offline(&junk, &pk),
            Err(CustodyError::Unreadable(_))
        ));
    }

    #[test]
    fn a_public_key_round_trips_through_pem_and_der() {
        let pk = *key().verifying_key();
        let pem = public_key_pem(&pk).unwrap();
        assert_eq!(public_key(pem.as_bytes()).unwrap(), pk);
        let der = pk.to_public_key_der().unwrap();
        assert_eq!(public_key(der.as_bytes()).unwrap(), pk);
        assert!(public_key(b"not a key").is_err());
    }
}
