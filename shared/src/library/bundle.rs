//! The bundle: every library file a playbook file declares, with the bytes of the ones the pipeline
//! manages and their SHA-256. The bundled playbooks' folder (`shared/playbooks/library/`) is
//! compiled in; a playbook file from S3 has its folder read beside it (see `entry`). Assembled
//! once per cold start and checked then: a declared file that is missing, too large or not the
//! pinned version stops the function from starting, naming the file.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{LibraryFileSpec, MAX_FILE_BYTES};

include!(concat!(env!("OUT_DIR"), "/bundled_library.rs"));

/// A declared library file: its declaration, and for a managed one its bytes and SHA-256.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// As the playbook file declares it.
    pub spec: LibraryFileSpec,
    /// The bytes to upload; `None` for an external file.
    pub content: Option<Bytes>,
    /// Hex SHA-256 the library's copy must have: the bytes' for a managed file, the pinned one (if
    /// any) for an external file.
    pub sha256: Option<String>,
}

impl BundleFile {
    /// Whether the pipeline keeps this file in the library (it is not external).
    pub fn managed(&self) -> bool {
        !self.spec.external
    }

    /// The name the library keeps it under: a bundled script's versioned name
    /// ([`super::versioned_name`]); a file a PutFile puts, or an external file, its own.
    pub fn library_name(&self) -> String {
        match (&self.content, &self.sha256) {
            (Some(_), Some(h)) if !self.spec.keeps_name => {
                super::versioned_name(&self.spec.name, h)
            }
            _ => self.spec.name.clone(),
        }
    }

    /// The upload that puts this file's bytes in the library as the pipeline does: the declared
    /// fields, the description ending with [`super::MANAGED_MARKER`], `OverrideIfExists` only when
    /// `replace` (what [`super::Verdict::Upload`] says). Submit and `lrctl library sync` both use it.
    pub fn upload(&self, replace: bool) -> crate::defender::LibraryUpload {
        crate::defender::LibraryUpload {
            file_name: self.library_name(),
            content: self.content.clone().unwrap_or_default(),
            description: self.spec.managed_description(),
            parameters_description: self.spec.parameters_description.clone(),
            has_parameters: self.spec.has_parameters,
            override_if_exists: replace,
        }
    }
}

/// A declared file the bundle cannot provide; fix the playbook file or its folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("library file {file}: {problem}")]
pub struct BundleError {
    /// The file's name as declared.
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

/// Every declared library file, by lower-case name (Defender's library ignores case).
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    files: BTreeMap<String, BundleFile>,
}

impl Bundle {
    /// No files: nothing is checked or uploaded.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The declared files, managed ones read with `read(name)` (`None`: not in the folder), checked
    /// against [`MAX_FILE_BYTES`] and any pinned SHA-256.
    pub fn assemble(
        specs: &[LibraryFileSpec],
        mut read: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<Self, BundleError> {
        let mut files = BTreeMap::new();
        for spec in specs {
            let error = |problem: String| BundleError {
                file: spec.name.clone(),
                problem,
            };
            if let Some(p) = spec.problem() {
                return Err(error(p));
            }
            let (content, sha256) = if spec.external {
                (None, spec.sha256.as_ref().map(|h| h.to_ascii_lowercase()))
            } else {
                let bytes = read(&spec.name).ok_or_else(|| {
                    error("not in the playbooks' library folder (declare it `external = true` if someone else keeps it in Defender's library)".into())
                })?;
                if bytes.len() > MAX_FILE_BYTES {
                    return Err(error(format!(
                        "{} bytes; Defender's library takes at most {MAX_FILE_BYTES} through the API",
                        bytes.len()
                    )));
                }
                let hash = crate::hash::sha256_hex(&bytes);
                if let Some(pin) = &spec.sha256
                    && !pin.eq_ignore_ascii_case(&hash)
                {
                    return Err(error(format!(
                        "its bytes have SHA-256 {hash}; the playbook file pins {pin}"
                    )));
                }
                (Some(Bytes::from(bytes)), Some(hash))
            };
            let key = spec.name.to_ascii_lowercase();
            if files.contains_key(&key) {
                return Err(error("declared twice".into()));
            }
            files.insert(
                key,
                BundleFile {
                    spec: spec.clone(),
                    content,
                    sha256,
                },
            );
        }
        Ok(Self { files })
    }

    /// The declared files with the bytes compiled in from `shared/playbooks/library/`.
    pub fn bundled(specs: &[LibraryFileSpec]) -> Result<Self, BundleError> {
        Self::assemble(specs, |name| {
            BUNDLED_LIBRARY
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.to_vec())
        })
    }

    /// The declared files, managed ones read from `dir` (a playbook file's library folder on disk).
    pub fn from_dir(specs: &[LibraryFileSpec], dir: &std::path::Path) -> Result<Self, BundleError> {
        Self::assemble(specs, |name| std::fs::read(dir.join(name)).ok())
    }

    /// The file of this name (any case), if declared.
    pub fn get(&self, name: &str) -> Option<&BundleFile> {
        self.files.get(&name.to_ascii_lowercase())
    }

    /// Every declared file, by name.
    pub fn files(&self) -> impl Iterator<Item = &BundleFile> {
        self.files.values()
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> LibraryFileSpec {
        LibraryFileSpec {
            name: name.into(),
            description: String::new(),
            has_parameters: false,
            parameters_description: None,
            external: false,
            sha256: None,
            replace_unmanaged: false,
            keeps_name: false,
        }
    }

    #[test]
    fn managed_files_are_read_and_hashed_external_ones_are_not() {
        let mut ext = spec("collector.exe");
        ext.external = true;
        let b = Bundle::assemble(&[spec("a.ps1"), ext], |n| {
            (n == "a.ps1").then(|| b"Write-Output 1".to_vec())
        })
        .unwrap();
        let a = b.get("A.PS1").unwrap();
        assert_eq!(
            a.sha256.as_deref(),
            Some(crate::hash::sha256_hex(b"Write-Output 1").as_str())
        );
        assert!(a.managed());
        let c = b.get("collector.exe").unwrap();
        assert!(c.content.is_none() && c.sha256.is_none() && !c.managed());
    }

    #[test]
    fn a_missing_file_a_large_one_a_wrong_pin_and_a_twin_are_named() {
        let e = Bundle::assemble(&[spec("gone.ps1")], |_| None).unwrap_err();
        assert_eq!(e.file, "gone.ps1");
        assert!(e.problem.contains("external = true"), "{e}");

        let e = Bundle::assemble(&[spec("big.bin")], |_| Some(vec![0; MAX_FILE_BYTES + 1]))
            .unwrap_err();
        assert!(e.problem.contains("at most"), "{e}");

        let mut pinned = spec("p.ps1");
        pinned.sha256 = Some("0".repeat(64));
        let e = Bundle::assemble(&[pinned], |_| Some(b"x".to_vec())).unwrap_err();
        assert!(e.problem.contains("pins"), "{e}");

        let e = Bundle::assemble(&[spec("t.ps1"), spec("T.ps1")], |_| Some(vec![1])).unwrap_err();
        assert!(e.problem.contains("twice"), "{e}");

        let mut both = spec("x.exe");
        both.external = true;
        both.replace_unmanaged = true;
        assert!(Bundle::assemble(&[both], |_| None).is_err());
    }
}
