//! Sealed records: the Redis and file stores can encrypt each record under a
//! key the application supplies, so that the store never holds a token in
//! clear. XChaCha20-Poly1305 with a random 192-bit nonce per write; the login
//! and the version are bound in as associated data.

use std::{fmt, sync::Arc};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

use super::error::{Kind, StoreError};

const NONCE_LEN: usize = 24;

/// The 32-byte key that seals the records of a store.
///
/// Give every replica of a fleet the same key (from a secret manager, say).
/// A store with a key writes only sealed records and reads only records that
/// open under its key and for the login asked: a record written in clear, with
/// another key, for another login or under another version reads as absent,
/// with a warning in the log that shows none of its contents. The key bytes are
/// zeroized on drop; `Debug` shows `SealKey(****)`.
///
/// ```
/// use daxium_auth::store::SealKey;
///
/// let key = SealKey::new([7u8; 32]);
/// assert_eq!(format!("{key:?}"), "SealKey(****)");
/// assert!(SealKey::from_slice(&[0u8; 16]).is_err());
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "sealed")))]
pub struct SealKey {
    key: Arc<Zeroizing<[u8; 32]>>,
}

impl SealKey {
    /// A seal key.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self {
            key: Arc::new(Zeroizing::new(bytes)),
        }
    }

    /// A seal key from a slice, which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, StoreError> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::config("sealed", "a seal key is 32 bytes long"))?;
        Ok(Self::new(bytes))
    }

    /// A fresh random key, for tests and for a fleet that shares the key
    /// through some other channel.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| no_randomness())?;
        Ok(Self::new(*bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(**self.key).into())
    }

    /// `nonce || ciphertext || tag`.
    #[cfg_attr(not(any(feature = "redis", feature = "file")), allow(dead_code))]
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| no_randomness())?;
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| StoreError::new(Kind::Other, "sealed", Some("sealing failed"), None))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext, or `None` when `sealed` does not open under this key
    /// and `aad`.
    #[cfg_attr(not(any(feature = "redis", feature = "file")), allow(dead_code))]
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(****)")
    }
}

#[cold]
fn no_randomness() -> StoreError {
    StoreError::new(
        Kind::Other,
        "sealed",
        Some("no random numbers from the operating system"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_message_opens_with_the_same_key_and_data_only() {
        let key = SealKey::new([1u8; 32]);
        let sealed = key.seal(b"login-a", b"sentinel plaintext").unwrap();
        assert!(!sealed.windows(b"sentinel".len()).any(|w| w == b"sentinel"));
        assert_eq!(
            key.open(b"login-a", &sealed).unwrap().as_slice(),
            b"sentinel plaintext"
        );
        assert!(key.open(b"login-b", &sealed).is_none());
        assert!(SealKey::new([2u8; 32]).open(b"login-a", &sealed).is_none());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open(b"login-a", &tampered).is_none());
        assert!(key.open(b"login-a", &sealed[..10]).is_none());
    }

    #[test]
    fn every_seal_takes_a_fresh_nonce() {
        let key = SealKey::generate().unwrap();
        let a = key.seal(b"", b"same").unwrap();
        let b = key.seal(b"", b"same").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn a_key_of_the_wrong_length_is_a_config_error() {
        let err = SealKey::from_slice(&[0u8; 31]).unwrap_err();
        assert!(err.is_config());
        assert!(SealKey::from_slice(&[0u8; 32]).is_ok());
    }
}
