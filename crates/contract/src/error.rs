//! One error type for the crate, so the CLI can print a single line that
//! names what went wrong (for scenario files: the offending field).

use thiserror::Error;

/// Everything that can fail in this crate.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The scenario file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The scenario file is larger than [`crate::scenario::SCENARIO_BYTES_MAX`].
    #[error("{path}: file is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The path as given.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file is not valid TOML.
    #[error("invalid TOML: {0}")]
    Toml(String),
    /// A field is missing, unknown, of the wrong type or out of range.
    #[error("{field}: {message}")]
    Field {
        /// Dotted path of the field, e.g. `types[2].probability`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A realized outcome given by the user does not fit the scenario.
    #[error("outcome: {0}")]
    Outcome(String),
    /// The problem is too large for the requested expectation method.
    #[error("{0}")]
    TooBig(String),
    /// The solver could not produce a contract.
    #[error("solver: {0}")]
    Solver(String),
    /// Writing tables or figures failed.
    #[error("output: {0}")]
    Output(String),
}

impl ContractError {
    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ContractError::Field { field: field.into(), message: message.into() }
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, ContractError>;
