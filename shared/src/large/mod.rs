//! Files larger than Defender's 3 GB GetFile limit: split on the device by a bundled script, fetched
//! part by part, joined into one evidence object and checked against the device's own hashes.
//!
//! Why a module of its own: a large file is the one piece of evidence that crosses several
//! Defender actions and several packages, so what it needs lives here, apart from the stages that
//! will act on it: what the device said it split ([`partmap`], parsed from the split script's
//! output as hostile input), how its parts map onto one S3 multipart upload ([`layout`]: each
//! device part starts on an S3 part boundary, so a part can be copied, retried or resumed on its
//! own), and the join of one part into that upload, hashed as it streams ([`join`]).
//!
//! Not wired into the stages yet: no playbook command asks for a large file (the follow-up
//! actions that fetch the parts and clean the device up are the next step).

pub mod join;
pub mod layout;
pub mod partmap;

pub use join::{JoinError, PartJoined, join_part};
pub use layout::{Layout, LayoutError, PART_LIMIT_DEFAULT};
pub use partmap::{PartMap, PartMapError, PartOnDevice};
