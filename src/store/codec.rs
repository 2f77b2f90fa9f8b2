//! The bytes a shared store keeps for one record: a JSON envelope naming the
//! login's digest and the version, holding the record in clear or sealed.
//! Decoding checks everything that ties the record to the login asked for, and
//! turns any mismatch into "absent" with a warning that shows no contents.
//!
//! ```text
//! {"format":1,"login":"<LoginKey::id>","version":7,"record":{
//!    "client_id":…,"username":…,"access_token":…,"refresh_token":…|null,
//!    "refresh_spent":false,"expires_at_ms":…,"scope":…|null,
//!    "refresh_expires_at_ms":…}}   (the last only when the endpoint said)
//! {"format":1,"login":"<LoginKey::id>","version":7,"sealed":"<base64 of nonce‖ciphertext‖tag>"}
//! ```
//!
//! A sealed record's plaintext is the `record` object above; its associated
//! data is `daxium-auth record v1\n<login id>\n<version>`.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{
    error::{Kind, StoreError},
    key::LoginKey,
    record::{Record, StoredRecord},
};
use crate::token::{AccessToken, RefreshToken};

#[cfg(feature = "sealed")]
use super::seal::SealKey;

/// The largest envelope read or written: two tokens of 8 KiB and room to spare.
pub(crate) const MAX_ENVELOPE: usize = 64 * 1024;

const FORMAT: u32 = 1;

/// Encodes and decodes the records of one store.
#[derive(Clone)]
pub(crate) struct Codec {
    store: &'static str,
    #[cfg(feature = "sealed")]
    seal: Option<SealKey>,
}

/// What a store holds for a key: the version its envelope states (when the
/// envelope parses at all), and the record when it is readable for the login.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) version: Option<u64>,
    pub(crate) record: Option<StoredRecord>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: u32,
    login: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<BodyOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

#[derive(Serialize)]
struct BodyOut<'a> {
    client_id: &'a str,
    username: &'a str,
    access_token: &'a str,
    refresh_token: Option<&'a str>,
    refresh_spent: bool,
    expires_at_ms: u64,
    scope: Option<&'a str>,
    // Absent rather than null, so that a replica of an earlier version reads
    // the record as it always did.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_expires_at_ms: Option<u64>,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    format: u32,
    login: String,
    version: u64,
    #[serde(default)]
    record: Option<BodyIn>,
    #[serde(default)]
    sealed: Option<String>,
}

#[derive(Deserialize)]
struct BodyIn {
    client_id: String,
    username: String,
    access_token: String,
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_spent: bool,
    expires_at_ms: u64,
    scope: Option<String>,
    #[serde(default)]
    refresh_expires_at_ms: Option<u64>,
}

impl Drop for BodyIn {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(refresh) = &mut self.refresh_token {
            refresh.zeroize();
        }
    }
}

impl Codec {
    /// A codec writing records in clear.
    pub(crate) fn clear(store: &'static str) -> Self {
        Self {
            store,
            #[cfg(feature = "sealed")]
            seal: None,
        }
    }

    /// A codec sealing every record under `key`.
    #[cfg(feature = "sealed")]
    pub(crate) fn sealed(store: &'static str, key: SealKey) -> Self {
        Self {
            store,
            seal: Some(key),
        }
    }

    /// Whether records are sealed.
    pub(crate) fn is_sealed(&self) -> bool {
        #[cfg(feature = "sealed")]
        {
            self.seal.is_some()
        }
        #[cfg(not(feature = "sealed"))]
        {
            false
        }
    }

    /// The envelope of `record`, version `version`, for `key`.
    pub(crate) fn encode(
        &self,
        key: &LoginKey,
        version: u64,
        record: &Record,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let body = BodyOut {
            client_id: key.client_id(),
            username: key.username(),
            access_token: record.access_token().expose_secret(),
            refresh_token: record.refresh_token().map(RefreshToken::expose_secret),
            refresh_spent: record.is_refresh_spent(),
            expires_at_ms: record.expires_at_unix_ms(),
            scope: record.scope(),
            refresh_expires_at_ms: record.refresh_expires_at_unix_ms(),
        };
        let mut envelope = EnvelopeOut {
            format: FORMAT,
            login: key.id(),
            version,
            record: None,
            sealed: None,
        };
        #[cfg(feature = "sealed")]
        if let Some(seal) = &self.seal {
            use base64::Engine as _;
            let plaintext = to_json(&body, self.store)?;
            let sealed = seal.seal(aad(key.id(), version).as_bytes(), &plaintext)?;
            envelope.sealed = Some(base64::engine::general_purpose::STANDARD.encode(sealed));
        }
        if !self.is_sealed() {
            envelope.record = Some(body);
        }
        let bytes = to_json(&envelope, self.store)?;
        if bytes.len() > MAX_ENVELOPE {
            return Err(StoreError::new(
                Kind::Other,
                self.store,
                Some("record larger than 64 KiB"),
                None,
            ));
        }
        Ok(bytes)
    }

    /// What `bytes` hold for `key`. Anything but a readable record of this
    /// login is logged (without contents) and reads as absent.
    pub(crate) fn decode(&self, key: &LoginKey, bytes: &[u8]) -> Decoded {
        match self.try_decode(key, bytes) {
            Ok(record) => Decoded {
                version: Some(record.version()),
                record: Some(record),
            },
            Err((version, reason)) => {
                tracing::warn!(
                    store = self.store,
                    login = key.id(),
                    reason,
                    "stored token record unreadable; treated as absent"
                );
                Decoded {
                    version,
                    record: None,
                }
            }
        }
    }

    fn try_decode(
        &self,
        key: &LoginKey,
        bytes: &[u8],
    ) -> Result<StoredRecord, (Option<u64>, &'static str)> {
        if bytes.len() > MAX_ENVELOPE {
            return Err((None, "larger than 64 KiB"));
        }
        let mut envelope: EnvelopeIn =
            serde_json::from_slice(bytes).map_err(|_| (None, "not a record envelope"))?;
        let version = envelope.version;
        let fail = |reason| (Some(version), reason);
        if envelope.format != FORMAT {
            return Err(fail("unknown format"));
        }
        if envelope.login != key.id() {
            return Err(fail("filed for another login"));
        }
        let body = match (envelope.record.take(), envelope.sealed.take()) {
            (Some(body), None) if !self.is_sealed() => body,
            (Some(_), None) => return Err(fail("in clear, but this store seals records")),
            (None, Some(sealed)) => self.open(key, version, &sealed).map_err(fail)?,
            _ => return Err(fail("neither clear nor sealed")),
        };
        if body.client_id != key.client_id() || body.username != key.username() {
            return Err(fail("written for another login"));
        }
        let access = AccessToken::new(&body.access_token).map_err(|_| fail("bad access token"))?;
        let refresh = match &body.refresh_token {
            Some(token) => Some(RefreshToken::new(token).map_err(|_| fail("bad refresh token"))?),
            None => None,
        };
        let record = Record::from_parts(
            access,
            refresh,
            body.refresh_spent,
            body.expires_at_ms,
            body.scope.clone(),
        )
        .with_refresh_expires_at_unix_ms(body.refresh_expires_at_ms);
        Ok(StoredRecord::new(key.clone(), version, record))
    }

    #[cfg(feature = "sealed")]
    fn open(&self, key: &LoginKey, version: u64, sealed: &str) -> Result<BodyIn, &'static str> {
        use base64::Engine as _;
        let Some(seal) = &self.seal else {
            return Err("sealed, but this store has no seal key");
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "sealed payload is not base64")?;
        let plaintext = seal
            .open(aad(key.id(), version).as_bytes(), &raw)
            .ok_or("does not open under the seal key")?;
        serde_json::from_slice(&plaintext).map_err(|_| "sealed payload is not a record")
    }

    #[cfg(not(feature = "sealed"))]
    fn open(&self, _: &LoginKey, _: u64, _: &str) -> Result<BodyIn, &'static str> {
        Err("sealed, but the `sealed` feature is off")
    }
}

#[cfg(feature = "sealed")]
fn aad(login: &str, version: u64) -> String {
    format!("daxium-auth record v1\n{login}\n{version}")
}

fn to_json(value: &impl Serialize, store: &'static str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    // One allocation large enough for two long tokens, so that no smaller
    // copy of a token is left behind in a freed buffer.
    let mut out = Zeroizing::new(Vec::with_capacity(24 * 1024));
    serde_json::to_writer(&mut *out, value).map_err(|e| {
        StoreError::new(
            Kind::Other,
            store,
            Some("record not serializable"),
            Some(e.into()),
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::sample as record;

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[test]
    fn a_clear_record_round_trips() {
        let codec = Codec::clear("test");
        let key = LoginKey::new("cid", "user");
        let bytes = codec.encode(&key, 4, &record()).unwrap();
        let decoded = codec.decode(&key, &bytes);
        assert_eq!(decoded.version, Some(4));
        let stored = decoded.record.unwrap();
        assert_eq!(stored.version(), 4);
        assert_eq!(stored.login(), &key);
        let rec = stored.record();
        assert_eq!(rec.access_token().expose_secret(), "acc-sentinel");
        assert_eq!(rec.refresh_token().unwrap().expose_secret(), "ref-sentinel");
        assert_eq!(rec.expires_at_unix_ms(), 1_700_000_000_123);
        assert_eq!(rec.scope(), Some("all"));
    }

    #[test]
    fn a_refresh_token_expiry_round_trips_and_its_absence_reads_as_before() {
        let codec = Codec::clear("test");
        let key = LoginKey::new("cid", "user");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_600_000);
        let bytes = codec
            .encode(&key, 2, &record().with_refresh_expires_at(at))
            .unwrap();
        let stored = codec.decode(&key, &bytes).record.unwrap();
        assert_eq!(stored.record().refresh_expires_at(), Some(at));
        // Written without one (an earlier version of the crate), it reads as
        // unknown, and the field is not written at all.
        let bytes = codec.encode(&key, 3, &record()).unwrap();
        assert!(!contains(&bytes, "refresh_expires_at_ms"));
        let stored = codec.decode(&key, &bytes).record.unwrap();
        assert_eq!(stored.record().refresh_expires_at(), None);
    }

    #[test]
    fn a_spent_refresh_token_is_not_written() {
        let codec = Codec::clear("test");
        let key = LoginKey::new("cid", "user");
        let bytes = codec
            .encode(&key, 1, &record().with_refresh_spent())
            .unwrap();
        assert!(!contains(&bytes, "ref-sentinel"));
        let stored = codec.decode(&key, &bytes).record.unwrap();
        assert!(stored.record().is_refresh_spent());
        assert!(stored.record().refresh_token().is_none());
    }

    #[test]
    fn a_record_of_another_login_reads_as_absent() {
        let codec = Codec::clear("test");
        let a = LoginKey::new("cid", "alice");
        let bytes = codec.encode(&a, 2, &record()).unwrap();
        let decoded = codec.decode(&LoginKey::new("cid", "bob"), &bytes);
        assert!(decoded.record.is_none());
        assert_eq!(decoded.version, Some(2));
        // The same digest with another login inside: refused too.
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let forged = text.replace("\"alice\"", "\"bob\"");
        let decoded = codec.decode(&a, forged.as_bytes());
        assert!(decoded.record.is_none());
    }

    /// The log lines `f` writes at `warn` and above.
    fn logged(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};

        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture(Arc::default());
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn an_unreadable_record_is_logged_without_its_contents() {
        let codec = Codec::clear("test");
        let alice = LoginKey::new("cid", "alice-sentinel");
        let bob = LoginKey::new("cid", "bob");
        let bytes = codec.encode(&alice, 1, &record()).unwrap();
        let text = logged(|| assert!(codec.decode(&bob, &bytes).record.is_none()));
        assert!(text.contains("treated as absent"), "{text}");
        assert!(text.contains("filed for another login"), "{text}");
        assert!(text.contains(bob.id()), "{text}");
        assert!(!text.contains("sentinel"), "{text}");
        let text = logged(|| assert!(codec.decode(&alice, &bytes).record.is_some()));
        assert!(text.is_empty(), "{text}");
    }

    #[test]
    fn garbage_reads_as_absent_without_a_version() {
        let codec = Codec::clear("test");
        let key = LoginKey::new("cid", "user");
        for bytes in [&b""[..], b"{", b"[]", b"{\"format\":1}"] {
            let decoded = codec.decode(&key, bytes);
            assert!(decoded.record.is_none() && decoded.version.is_none());
        }
        let huge = vec![b' '; MAX_ENVELOPE + 1];
        assert!(codec.decode(&key, &huge).record.is_none());
    }

    #[test]
    fn an_unknown_format_or_a_bad_token_reads_as_absent() {
        let codec = Codec::clear("test");
        let key = LoginKey::new("cid", "user");
        let text = String::from_utf8(codec.encode(&key, 1, &record()).unwrap().to_vec()).unwrap();
        let future = text.replace("\"format\":1", "\"format\":2");
        assert!(codec.decode(&key, future.as_bytes()).record.is_none());
        let bad = text.replace("acc-sentinel", "acc sentinel");
        assert!(codec.decode(&key, bad.as_bytes()).record.is_none());
    }

    #[cfg(feature = "sealed")]
    #[test]
    fn a_sealed_record_holds_no_token_and_opens_only_where_it_belongs() {
        let key = LoginKey::new("cid", "sentinel-user");
        let codec = Codec::sealed("test", SealKey::new([9u8; 32]));
        let bytes = codec.encode(&key, 3, &record()).unwrap();
        assert!(!contains(&bytes, "sentinel"));
        let stored = codec.decode(&key, &bytes).record.unwrap();
        assert_eq!(
            stored.record().access_token().expose_secret(),
            "acc-sentinel"
        );

        let other_key = Codec::sealed("test", SealKey::new([8u8; 32]));
        let decoded = other_key.decode(&key, &bytes);
        assert!(decoded.record.is_none());
        assert_eq!(decoded.version, Some(3));
        assert!(Codec::clear("test").decode(&key, &bytes).record.is_none());

        // Moved to another version: the associated data no longer matches.
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let moved = text.replace("\"version\":3", "\"version\":4");
        assert!(codec.decode(&key, moved.as_bytes()).record.is_none());

        // A sealing store refuses a record in clear.
        let clear = Codec::clear("test").encode(&key, 1, &record()).unwrap();
        assert!(codec.decode(&key, &clear).record.is_none());

        let text = logged(|| assert!(other_key.decode(&key, &bytes).record.is_none()));
        assert!(text.contains("does not open under the seal key"), "{text}");
        assert!(!text.contains("sentinel"), "{text}");
    }
}
