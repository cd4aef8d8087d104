//! Microsoft Defender for Endpoint: which cloud ([`cloud`]), credentials and tokens ([`auth`]),
//! the typed client ([`client`]) and its entities ([`model`]), the library API ([`library`]), and
//! errors phrased as what to do next ([`error`]).

pub mod auth;
pub mod client;
pub mod cloud;
pub mod error;
pub mod library;
pub mod model;

pub use auth::{CredentialSource, Credentials, StaticCredentials, Token, TokenProvider};
pub use client::{DefenderClient, DownloadLink, http_client};
pub use cloud::{CloudPreset, DefenderConfig, cloud_preset, clouds};
pub use error::{DefenderError, Next};
pub use library::LibraryUpload;
pub use model::{
    ActionFilter, ActionId, ActionStatus, Command, CommandResult, CommandStatus, CommandType,
    IdError, LibraryFile, LiveResponseRequest, MachineAction, MachineId, Param, Transcript,
};
