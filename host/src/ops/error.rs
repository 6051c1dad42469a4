//! Why a gateway operation failed, as every edge reports it.

use super::port::Unreachable;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// An argument can never be valid (an empty group, a malformed client id); nothing was
    /// sent.
    #[error("{argument}: {reason}")]
    InvalidArgument {
        /// The argument as the table names it, with the index of a list item: `groups[1]`.
        argument: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No gateway the operation needed is linked, or none answered a query in time; for an
    /// operation about one client, which gateway.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}
