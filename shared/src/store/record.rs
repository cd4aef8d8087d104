//! One record in S3: its JSON, reading it back (a record that does not parse says so, and is not
//! retried), and changing it by compare-and-swap. Every record type goes through here.

use serde::Serialize;

use crate::ports::{ObjectStore, Put, PutResult, StoreError};

/// The `v` written in every run record, command record and manifest.
pub const RECORD_VERSION: u32 = 1;

/// A record's stored bytes (pretty JSON).
pub fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(v).map_err(|e| StoreError(format!("cannot encode record: {e}")))
}

/// A stored record read back; one that does not parse is [`StoreError::unreadable`] (naming `key`).
pub fn parse<T: serde::de::DeserializeOwned>(key: &str, body: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body).map_err(|e| StoreError::unreadable(key, e))
}

/// Applies `change` to the record at `key` with compare-and-swap, retrying on a concurrent write.
/// `change` returns false to leave the record as it is. Returns the record as stored afterwards,
/// or None when there is no record.
pub async fn update_record<S, T, F>(
    store: &S,
    key: &str,
    mut change: F,
) -> Result<Option<T>, StoreError>
where
    S: ObjectStore,
    T: Serialize + serde::de::DeserializeOwned,
    F: FnMut(&mut T) -> bool,
{
    for _ in 0..20 {
        let Some(stored) = store.get(key).await? else {
            return Ok(None);
        };
        let mut rec: T = parse(key, &stored.body)?;
        if !change(&mut rec) {
            return Ok(Some(rec));
        }
        match store
            .put(key, json(&rec)?, Put::IfMatch(stored.etag))
            .await?
        {
            PutResult::Written { .. } => return Ok(Some(rec)),
            PutResult::Conflict => continue,
        }
    }
    Err(StoreError(format!("{key}: too many concurrent updates")))
}
