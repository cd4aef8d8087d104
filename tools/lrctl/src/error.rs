//! One error type for the whole command, so that `main` prints every failure the same way and
//! picks the exit code from what kind of failure it was: a setting the user must supply (2) or
//! something that went wrong while working (1). Messages say what to do next.

/// What went wrong, in words meant for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or argument is missing or malformed; the message names the flag and variable.
    #[error("{0}")]
    Usage(String),
    /// AWS, the bucket or a stored record failed us; the message names the key or queue.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }

    /// A failure with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }
}

/// Results of lrctl's operations.
pub type Result<T> = std::result::Result<T, Error>;
