//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`], and the
//! connection to the server, cluster or Sentinel that its URL names.

use std::{fmt, time::Duration};

use redis::Script;
use secrecy::{ExposeSecret, SecretString};

use super::{Inner, LIB, Link, RedisStore, STORE, target};
use crate::store::{StoreError, check_call_timeout, codec::Codec};

/// Settings of a [`RedisStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStoreBuilder {
    pub(super) url: SecretString,
    pub(super) timeout: Duration,
    pub(super) prefix: String,
    pub(super) root_certificates: Option<Vec<u8>>,
    pub(super) codec: Codec,
}

impl RedisStoreBuilder {
    /// How long one call may take, connecting included: 1 ms ..= 60 s
    /// (default [`RedisStore::DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The prefix of every key and channel (default `daxium-auth:`). Logins
    /// of different token endpoints are kept apart by their keys already. A
    /// prefix with `{` or `}` is refused by [`build`](Self::build): it would
    /// change the keys' cluster hash tag.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Trusts these PEM certificates, and only them, for a `rediss` URL: for
    /// a Redis whose certificate a private authority signed.
    #[must_use]
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Seals every record with `key`; records that do not open under it read
    /// as absent.
    #[cfg(feature = "sealed")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sealed")))]
    #[must_use]
    pub fn seal(mut self, key: crate::store::SealKey) -> Self {
        self.codec = Codec::sealed(STORE, key);
        self
    }

    /// The store. Fails on a URL that does not parse or has another scheme,
    /// on a key prefix with a brace, and on root certificates without TLS; it
    /// does not connect.
    ///
    /// For a `rediss` URL, the ring crypto provider becomes rustls's process
    /// default unless one is installed already.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        check_call_timeout(self.timeout, STORE)?;
        if self.prefix.contains(['{', '}']) {
            return Err(StoreError::config(
                STORE,
                "the key prefix must not hold a brace: the login's id is the keys' hash tag",
            ));
        }
        let parsed = target::parse(self.url.expose_secret())?;
        let (address, tls) = (parsed.address.clone(), parsed.tls);
        let link = Link::new(parsed, self.root_certificates, self.timeout)?;
        let script = |body: &str| Script::new(&format!("{LIB}{body}"));
        Ok(RedisStore {
            inner: std::sync::Arc::new(Inner {
                link,
                timeout: self.timeout,
                prefix: self.prefix,
                codec: self.codec,
                read: script(include_str!("read.lua")),
                compare_and_set: script(include_str!("compare_and_set.lua")),
                acquire: Script::new(include_str!("acquire.lua")),
                release: Script::new(include_str!("release.lua")),
                address,
                tls,
            }),
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("root_certificates", &self.root_certificates.is_some())
            .field("sealed", &self.codec.is_sealed())
            .finish()
    }
}
