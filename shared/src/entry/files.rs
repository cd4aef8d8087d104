//! The files a function reads at its start from S3, each pinned by the deployment's SHA-256:
//! the playbook file (with the library files beside it) and the tenant registry. A file with
//! other bytes than the pin stops the start: whoever may write the bucket changes neither what
//! runs as SYSTEM nor which tenant's devices a sender reaches.

use std::collections::BTreeSet;

use super::InitError;
use crate::adapters::s3::{S3Store, s3_client};
use crate::alerts::playbook::Playbooks;
use crate::library::{Bundle, BundleError};
use crate::ports::ObjectStore;
use crate::stages::settings::PinnedFile;
use crate::tenants::{Registry, Tenancy};

/// The bundled playbooks, or the pinned playbook file `PLAYBOOKS_S3_URI` names, checked (intake
/// reads only this: it never needs the library files, nor may it read them).
pub async fn load_playbook_file(
    file: Option<&PinnedFile>,
    sdk: &aws_config::SdkConfig,
) -> Result<Playbooks, InitError> {
    Ok(match file {
        None => Playbooks::bundled()?,
        Some(f) => read_playbook_file(&f.uri, Some(&f.sha256), sdk).await?.0,
    })
}

/// The tenants the deployment serves: one (no `TENANTS_S3_URI`), or those of the pinned
/// registry, checked (against `playbooks`, the playbook names, where the function loads them).
/// A registry that is not the pinned one, does not parse or names something invalid stops the
/// start, naming the entry and the field.
pub async fn load_tenancy(
    file: Option<&PinnedFile>,
    playbooks: Option<&Playbooks>,
    sdk: &aws_config::SdkConfig,
) -> Result<Tenancy, InitError> {
    let Some(f) = file else {
        return Ok(Tenancy::Single);
    };
    let (bucket, key) = split_uri(f.uri_var, &f.uri)?;
    let store = S3Store::new(s3_client(sdk), bucket);
    let body = read_object(&store, key)
        .await?
        .ok_or_else(|| InitError::Other(format!("{} {}: no such object", f.uri_var, f.uri)))?;
    check_pin(f, &body)?;
    let text = String::from_utf8(body)
        .map_err(|_| InitError::Other(format!("{} {}: not UTF-8 text", f.uri_var, f.uri)))?;
    let names: Option<BTreeSet<String>> =
        playbooks.map(|p| p.all().iter().map(|p| p.name.clone()).collect());
    Ok(Tenancy::Registry(Registry::from_toml(
        &text,
        names.as_ref(),
    )?))
}

/// The playbooks with their bundle: the bundled ones and library, or the playbook file at `uri`
/// with the library files it manages read from its folder beside it
/// (`<dir>/<library_folder>/<name>`). Submit loads this, checked, at cold start (and
/// `lrctl library` for the tenant): a declared file that is missing stops it, naming the file.
///
/// With `pin` (a deployment always pins: `PLAYBOOKS_SHA256`), a file with other bytes stops the
/// start, and every library file the pinned file manages must pin its own SHA-256: so whoever
/// may write the playbooks bucket can change neither the playbooks nor the scripts they run.
pub async fn load_playbooks(
    uri: Option<&str>,
    pin: Option<&str>,
    sdk: &aws_config::SdkConfig,
) -> Result<(Playbooks, Bundle), InitError> {
    let Some(uri) = uri else {
        let playbooks = Playbooks::bundled()?;
        let bundle = Bundle::bundled(playbooks.library_files())?;
        return Ok((playbooks, bundle));
    };
    let (playbooks, store, dir) = read_playbook_file(uri, pin, sdk).await?;
    let mut contents = std::collections::BTreeMap::new();
    for spec in playbooks.library_files().iter().filter(|s| !s.external) {
        if pin.is_some() && spec.sha256.is_none() {
            return Err(InitError::Library(BundleError {
                file: spec.name.clone(),
                problem: format!(
                    "the pinned playbook file {uri} must pin this file's sha256: its bytes come from the playbooks bucket, and only a pin in the pinned file keeps them from being swapped"
                ),
            }));
        }
        let key = format!("{dir}{}/{}", playbooks.library_folder(), spec.name);
        if let Some(bytes) = read_object(&store, &key).await? {
            contents.insert(spec.name.clone(), bytes);
        }
    }
    let bundle = Bundle::assemble(playbooks.library_files(), |name| contents.remove(name))?;
    Ok((playbooks, bundle))
}

/// The playbook file at `uri`, checked against `pin`; the store of its bucket and the folder it
/// is in (`dir/`).
async fn read_playbook_file(
    uri: &str,
    pin: Option<&str>,
    sdk: &aws_config::SdkConfig,
) -> Result<(Playbooks, S3Store, String), InitError> {
    let (bucket, key) = split_uri("PLAYBOOKS_S3_URI", uri)?;
    let store = S3Store::new(s3_client(sdk), bucket);
    let body = read_object(&store, key)
        .await?
        .ok_or_else(|| InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: no such object")))?;
    if let Some(pin) = pin {
        check_pin(
            &PinnedFile {
                uri: uri.to_string(),
                sha256: pin.to_string(),
                uri_var: "PLAYBOOKS_S3_URI",
                sha256_var: "PLAYBOOKS_SHA256",
            },
            &body,
        )?;
    }
    let text = String::from_utf8(body)
        .map_err(|_| InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: not UTF-8 text")))?;
    let playbooks = Playbooks::from_toml(&text)?;
    let dir = key
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    Ok((playbooks, store, dir))
}

/// A pinned file's bytes against the deployment's pin: any other bytes stop the start.
pub fn check_pin(file: &PinnedFile, body: &[u8]) -> Result<(), InitError> {
    let actual = crate::hash::sha256_hex(body);
    if actual.eq_ignore_ascii_case(&file.sha256) {
        return Ok(());
    }
    Err(InitError::Other(format!(
        "{} {} has SHA-256 {actual}, but the deployment pins {} ({}): refusing to start on a file nobody deployed. If the change is yours, deploy its hash",
        file.uri_var, file.uri, file.sha256, file.sha256_var
    )))
}

/// `s3://bucket/key` as (bucket, key).
fn split_uri<'u>(var: &str, uri: &'u str) -> Result<(&'u str, &'u str), InitError> {
    uri.strip_prefix("s3://")
        .and_then(|p| p.split_once('/'))
        .ok_or_else(|| InitError::Other(format!("{var} {uri}: expected s3://bucket/key")))
}

async fn read_object(store: &S3Store, key: &str) -> Result<Option<Vec<u8>>, InitError> {
    store
        .get(key)
        .await
        .map_err(|e| InitError::Other(format!("{}: {e}", store.location(key))))
        .map(|o| o.map(|s| s.body.to_vec()))
}
