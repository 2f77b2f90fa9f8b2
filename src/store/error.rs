//! The error of a token store. [`StoreError`] says which store failed and how,
//! in one line that never holds a token, a password or a URL; the underlying
//! cause, if any, is only reachable through [`source`](StdError::source).

use std::{error::Error as StdError, fmt, sync::Arc};

use crate::error::BoxError;

/// Why a token store call failed.
///
/// The type is opaque: ask with the `is_*` predicates. It is cheap to clone, so
/// one failure can reach every waiter. Whatever the kind, the caller's way out
/// is the same: carry on without the store (a grant of its own) and try the
/// store again later.
#[derive(Clone)]
pub struct StoreError {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    store: &'static str,
    detail: Option<&'static str>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A setting the store refused: a bad URL, a key of the wrong length.
    Config,
    /// The store could not be reached, or dropped the connection.
    Unavailable,
    /// The store did not answer within its timeout.
    Timeout,
    /// The store refused the credentials (Redis AUTH, ACL).
    AuthFailed,
    /// The store answered with an error (out of memory, a script error, a
    /// reply of an unexpected shape).
    Server,
    /// A file system error of the file store.
    Io,
    /// Anything else: no random numbers, a blocking task that died.
    Other,
}

impl StoreError {
    pub(crate) fn new(
        kind: Kind,
        store: &'static str,
        detail: Option<&'static str>,
        source: Option<BoxError>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                store,
                detail,
                source,
            }),
        }
    }

    /// A refused setting, with a fixed description that holds no input.
    pub(crate) fn config(store: &'static str, detail: &'static str) -> Self {
        Self::new(Kind::Config, store, Some(detail), None)
    }

    /// A setting was refused when the store was built: a URL that does not
    /// parse or has the wrong scheme, a seal key of the wrong length, a
    /// directory that cannot be used.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// The store could not be reached: connection refused or dropped, a TLS
    /// handshake that failed, a server still loading its data.
    pub fn is_unavailable(&self) -> bool {
        self.inner.kind == Kind::Unavailable
    }

    /// The store did not answer within its timeout. A write that timed out
    /// may still have been committed: read again before trusting either way.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// The store refused the credentials it was given (a wrong Redis password
    /// or user, a missing ACL permission).
    pub fn is_auth_failed(&self) -> bool {
        self.inner.kind == Kind::AuthFailed
    }

    /// The store answered with an error of its own, or with a reply the crate
    /// does not understand.
    pub fn is_server_error(&self) -> bool {
        self.inner.kind == Kind::Server
    }

    /// A file system error of the file store (permissions, a full disk).
    pub fn is_io(&self) -> bool {
        self.inner.kind == Kind::Io
    }

    /// Which store failed: `"memory"`, `"redis"` or `"file"` (or the name a
    /// custom store gave).
    pub fn store(&self) -> &'static str {
        self.inner.store
    }

    /// An error for a custom [`TokenStore`](super::TokenStore) that could not
    /// reach its backend.
    pub fn unavailable(store: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Unavailable, store, None, Some(source.into()))
    }

    /// An error for a store whose backend did not answer in time.
    pub fn timeout(store: &'static str) -> Self {
        Self::new(Kind::Timeout, store, None, None)
    }

    /// An error for a custom store whose backend answered with an error.
    pub fn server(store: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Server, store, None, Some(source.into()))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} token store: ", self.inner.store)?;
        f.write_str(match self.inner.kind {
            Kind::Config => "invalid setting",
            Kind::Unavailable => "unavailable",
            Kind::Timeout => "no answer in time",
            Kind::AuthFailed => "credentials refused",
            Kind::Server => "error from the server",
            Kind::Io => "file system error",
            Kind::Other => "failed",
        })?;
        if let Some(detail) = self.inner.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StoreError");
        d.field("kind", &self.inner.kind)
            .field("store", &self.inner.store);
        if let Some(detail) = self.inner.detail {
            d.field("detail", &detail);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_store_and_never_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused-cause");
        let err = StoreError::unavailable("redis", io);
        assert_eq!(err.to_string(), "redis token store: unavailable");
        assert!(err.is_unavailable() && !err.is_timeout());
        assert!(err.source().unwrap().to_string().contains("refused-cause"));
        assert!(format!("{err:?}").contains("refused-cause"));
    }

    #[test]
    fn config_errors_carry_a_fixed_detail() {
        let err = StoreError::config("file", "not an absolute path");
        assert!(err.is_config());
        assert_eq!(
            err.to_string(),
            "file token store: invalid setting: not an absolute path"
        );
        assert!(err.source().is_none());
    }

    #[test]
    fn each_kind_has_its_own_predicate() {
        let cases = [
            (Kind::Config, 0),
            (Kind::Unavailable, 1),
            (Kind::Timeout, 2),
            (Kind::AuthFailed, 3),
            (Kind::Server, 4),
            (Kind::Io, 5),
            (Kind::Other, 6),
        ];
        for (kind, index) in cases {
            let err = StoreError::new(kind, "memory", None, None);
            let answers = [
                err.is_config(),
                err.is_unavailable(),
                err.is_timeout(),
                err.is_auth_failed(),
                err.is_server_error(),
                err.is_io(),
            ];
            for (i, answer) in answers.iter().enumerate() {
                assert_eq!(*answer, i == index, "{kind:?} predicate {i}");
            }
        }
    }
}
