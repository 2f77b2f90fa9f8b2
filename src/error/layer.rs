//! The errors of the layer: [`Error`], what its services return (the inner
//! service's own error, or a [`TokenError`]), and [`BuildError`], a setting
//! its builder refused.

use std::{error::Error as StdError, fmt};

use super::{BoxError, TokenError};

/// The error of an [`AuthService`](crate::AuthService): either no token could
/// be had, or the inner service failed. The two are never mixed up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// No access token: the grant failed, or fails fast during a backoff.
    Token(TokenError),
    /// The inner service's own error, unchanged.
    Inner(E),
}

impl<E> Error<E> {
    /// Whether no token could be had.
    pub fn is_token(&self) -> bool {
        matches!(self, Self::Token(_))
    }

    /// Whether the inner service failed.
    pub fn is_inner(&self) -> bool {
        matches!(self, Self::Inner(_))
    }

    /// The token error, if that is what this is.
    pub fn token_error(&self) -> Option<&TokenError> {
        match self {
            Self::Token(e) => Some(e),
            Self::Inner(_) => None,
        }
    }

    /// A boxed error, for stacks whose errors are `BoxError` (tower's
    /// `Timeout`, `Buffer`, `Retry` below the layer): use it with
    /// `MapErrLayer::new(Error::into_box_error)`. The token error stays a
    /// [`TokenError`] for `downcast_ref`.
    pub fn into_box_error(self) -> BoxError
    where
        E: Into<BoxError>,
    {
        match self {
            Self::Token(e) => Box::new(e),
            Self::Inner(e) => e.into(),
        }
    }

    /// The inner service's error, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Token(_) => None,
        }
    }
}

impl<E> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("no access token for the request"),
            Self::Inner(_) => f.write_str("the inner service failed"),
        }
    }
}

impl<E> StdError for Error<E>
where
    E: StdError + 'static,
{
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Token(e) => Some(e),
            Self::Inner(e) => Some(e),
        }
    }
}

/// A configuration the builder refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A URL that does not parse as an absolute `http`/`https` URL.
    #[error("invalid {what} URL: {reason}")]
    InvalidUrl {
        /// Which URL (`token`, `API origin`).
        what: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A plain `http://` URL whose host is not a loopback address.
    #[error("{what} URL uses http:// for a host that is not loopback; use https://")]
    InsecureUrl {
        /// Which URL (`token`, `API origin`).
        what: &'static str,
    },
    /// A required setting is missing.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// A setting out of its range.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        name: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
}
