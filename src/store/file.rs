//! The file token store: one JSON file per login in a directory, shared by the
//! processes of one host and kept across restarts. Writes are atomic (a
//! temporary file, fsync, rename, fsync of the directory) and version-checked
//! under a file lock; the lease is an advisory lock on a file of its own.

use std::{
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fs4::{FileExt, TryLockError};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{
    Conflict, Lease, LeaseOwner, LoginKey, Record, StoreError, StoredRecord, TokenStore,
    WriteOutcome,
    codec::{Codec, Decoded, MAX_ENVELOPE},
    error::Kind,
    lease_ttl, next_version,
    record::unix_ms,
};

mod builder;

pub use self::builder::FileStoreBuilder;

const STORE: &str = "file";

/// A [`TokenStore`] in a directory, for the processes of one host.
///
/// The directory holds, for each login (`ID` is [`LoginKey::id`]):
///
/// - `ID.json`, the record (see below), mode 0600, replaced atomically: a
///   temporary `.ID.*.tmp` is written and fsynced, renamed over it, and the
///   directory is fsynced, so that a reader sees the old record or the new
///   one, never a part, also across a crash;
/// - `ID.write.lock`, locked for the few milliseconds of a version-checked
///   write, so that two processes never both write over the same version;
/// - `ID.lock`, the lease: an exclusive advisory lock (`flock(2)` on unix)
///   held by the lease's holder, which also writes its owner and expiry there
///   so that others can tell its remaining time to live.
///
/// **The lease's time to live.** A lease ends at the first of: its holder's
/// release, its time to live (the holding store drops the lock then), and the
/// death of the holding process (the operating system drops the lock with the
/// process). A process that is alive but frozen keeps its locks: the time to
/// live is enforced by the holder's own runtime. Locks belong to an open file,
/// so two `FileStore`s in one process contend like two processes do. Never
/// delete the lock files while stores use the directory.
///
/// A new `FileStore` on the directory (a restart) adopts the records found
/// there. The record format is the shared envelope: JSON naming the login's
/// digest and the version, with the record in clear or, with a
/// `SealKey` (feature `sealed`), sealed.
///
/// Every call runs its file I/O on tokio's blocking pool and gives up after the
/// store's timeout ([`FileStore::DEFAULT_TIMEOUT`]); a write that timed out may
/// still land. [`wait_for_change`](TokenStore::wait_for_change) polls.
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    timeout: Duration,
    codec: Codec,
    leases: Mutex<HashMap<String, Held>>,
    generation: AtomicU64,
}

/// A lease this store holds: the locked file, until when, and which grant
/// of it (so that a timer of an earlier grant does not end a renewed one).
struct Held {
    owner: LeaseOwner,
    // Dropping the file closes it, which releases the lock.
    file: File,
    until: Instant,
    generation: u64,
}

/// What an attempt on the lease file found.
enum Taken {
    Acquired { generation: u64, until: Instant },
    Held(Option<Duration>),
}

impl FileStore {
    /// How long one call may take unless the builder says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    /// A store in `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::builder(dir).build()
    }

    /// Settings for a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileStoreBuilder {
        FileStoreBuilder {
            dir: dir.into(),
            timeout: FileStore::DEFAULT_TIMEOUT,
            codec: Codec::clear(STORE),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs `f` on the blocking pool, for at most the store's timeout.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || f(&inner));
        match tokio::time::timeout(self.inner.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::new(
                Kind::Other,
                STORE,
                Some("the file task failed"),
                Some(join.into()),
            )),
            Err(_) => Err(StoreError::timeout(STORE)),
        }
    }

    /// Ends the lease grant `generation` of `id` at `until`, unless it was
    /// released or renewed first.
    fn expire_at(&self, id: String, generation: u64, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to time it: the next call of this store ends it.
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            // Closing the file is I/O: off the async workers.
            let _closed = tokio::task::spawn_blocking(move || {
                let mut leases = inner.leases();
                if leases.get(&id).is_some_and(|h| h.generation == generation) {
                    leases.remove(&id);
                }
            })
            .await;
        });
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.dir)
            .field("timeout", &self.inner.timeout)
            .field("sealed", &self.inner.codec.is_sealed())
            .finish()
    }
}

impl Inner {
    fn leases(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // Every change to the map is one insert or remove: whole after a panic.
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, key: &LoginKey, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", key.id()))
    }

    /// What the record file holds; `None` when there is no file.
    fn read(&self, key: &LoginKey) -> Result<Option<Decoded>, StoreError> {
        let mut options = OpenOptions::new();
        options.read(true);
        // A FIFO at the record's name would block the open until a writer
        // came (holding the write lock meanwhile): opened without blocking, it
        // is refused below like any other non-file. Regular files ignore it.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
        let file = match options.open(self.path(key, ".json")) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e, "cannot open the record")),
        };
        // A directory (or a device) at the record's name was not written by a
        // store: no record, and the next write replaces it if it can.
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            tracing::warn!(
                store = STORE,
                login = key.id(),
                "something other than a file at the record's name; treated as absent"
            );
            return Ok(None);
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(4096));
        file.take(MAX_ENVELOPE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(e, "cannot read the record"))?;
        Ok(Some(self.codec.decode(key, &bytes)))
    }

    fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let _locked = self.lock_for_write(key)?;
        let current = self.read(key)?;
        let current_version = current.as_ref().and_then(|d| d.version);
        if current_version != expected {
            let record = current.and_then(|d| d.record);
            return Ok(WriteOutcome::Conflict(Conflict::new(
                current_version,
                record,
            )));
        }
        let version = next_version(expected, STORE)?;
        let bytes = self.codec.encode(key, version, record)?;
        self.replace(key, &bytes)?;
        Ok(WriteOutcome::Written { version })
    }

    /// The write lock of `key`, waited for within the store's timeout.
    fn lock_for_write(&self, key: &LoginKey) -> Result<File, StoreError> {
        let file = open_lock_file(&self.path(key, ".write.lock"))?;
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        // Bounded by the deadline; a holder keeps the lock for one fsync.
        loop {
            match FileExt::try_lock(&file) {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => return Err(StoreError::timeout(STORE)),
                Err(TryLockError::Error(e)) => return Err(io_error(e, "cannot lock for writing")),
            }
        }
    }

    /// Replaces the record file with `bytes`, atomically and durably.
    fn replace(&self, key: &LoginKey, bytes: &[u8]) -> Result<(), StoreError> {
        let target = self.path(key, ".json");
        let temp = self.dir.join(format!(
            ".{}.{}.tmp",
            key.id(),
            LeaseOwner::random().as_str()
        ));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&temp)
            .map_err(|e| io_error(e, "cannot create a temporary file"))?;
        // An empty directory in the record's place goes (a full one stays,
        // and the rename fails).
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_dir(&target);
        }
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temp, &target));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error(e, "cannot write the record"));
        }
        sync_dir(&self.dir)
    }

    fn acquire(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
        now: Instant,
    ) -> Result<Taken, StoreError> {
        let ttl = lease_ttl(ttl);
        let until = now + ttl;
        let expires_at_ms = unix_ms(SystemTime::now()).saturating_add(millis(ttl));
        let mut leases = self.leases();
        if let Some(held) = leases.get_mut(key.id()) {
            if held.until > now && held.owner != *owner {
                return Ok(Taken::Held(Some(held.until - now)));
            }
            if held.until > now {
                write_lease_info(&held.file, owner, expires_at_ms)?;
                held.until = until;
                held.generation = self.generation.fetch_add(1, Ordering::Relaxed);
                return Ok(Taken::Acquired {
                    generation: held.generation,
                    until,
                });
            }
            // Lapsed: closing the file frees the lock for anyone.
            leases.remove(key.id());
        }
        let file = open_lock_file(&self.path(key, ".lock"))?;
        match FileExt::try_lock(&file) {
            Ok(()) => {
                write_lease_info(&file, owner, expires_at_ms)?;
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                leases.insert(
                    key.id().to_owned(),
                    Held {
                        owner: owner.clone(),
                        file,
                        until,
                        generation,
                    },
                );
                Ok(Taken::Acquired { generation, until })
            }
            Err(TryLockError::WouldBlock) => Ok(Taken::Held(read_lease_remaining(file))),
            Err(TryLockError::Error(e)) => Err(io_error(e, "cannot lock the lease")),
        }
    }

    fn release(&self, key: &LoginKey, owner: &LeaseOwner, now: Instant) -> bool {
        let mut leases = self.leases();
        match leases.get(key.id()) {
            Some(held) if held.owner == *owner => {
                let live = held.until > now;
                leases.remove(key.id());
                live
            }
            _ => false,
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    // A lock file is written: one that is a symlink (planted by whoever can
    // write to the directory) is refused rather than followed to its target.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options
        .open(path)
        .map_err(|e| io_error(e, "cannot open a lock file"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseInfo {
    owner: String,
    expires_at_ms: u64,
}

/// Writes the holder and its expiry into the lease file, for contenders.
/// Written over the old text, then cut to length: a reader never sees it
/// empty.
fn write_lease_info(
    mut file: &File,
    owner: &LeaseOwner,
    expires_at_ms: u64,
) -> Result<(), StoreError> {
    let info = serde_json::to_vec(&LeaseInfo {
        owner: owner.as_str().to_owned(),
        expires_at_ms,
    })
    .map_err(|e| StoreError::new(Kind::Other, STORE, None, Some(e.into())))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&info))
        .and_then(|()| file.set_len(info.len() as u64))
        .map_err(|e| io_error(e, "cannot write the lease"))
}

/// The holder's remaining time to live, as it wrote it; `None` when the file
/// does not say.
fn read_lease_remaining(mut file: File) -> Option<Duration> {
    let mut text = Vec::with_capacity(128);
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(4096).read_to_end(&mut text).ok()?;
    let info: LeaseInfo = serde_json::from_slice(&text).ok()?;
    let now = unix_ms(SystemTime::now());
    Some(Duration::from_millis(
        info.expires_at_ms.saturating_sub(now),
    ))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(e, "cannot sync the directory"))
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn io_error(e: io::Error, detail: &'static str) -> StoreError {
    StoreError::new(Kind::Io, STORE, Some(detail), Some(e.into()))
}

impl TokenStore for FileStore {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        let key = key.clone();
        let decoded = self.blocking(move |inner| inner.read(&key)).await?;
        Ok(decoded.and_then(|d| d.record))
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let (key, record) = (key.clone(), record.clone());
        self.blocking(move |inner| inner.write(&key, expected, &record))
            .await
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let id = key.id().to_owned();
        let (key, owner) = (key.clone(), owner.clone());
        let now = Instant::now();
        let taken = self
            .blocking(move |inner| inner.acquire(&key, &owner, ttl, now))
            .await?;
        match taken {
            Taken::Acquired { generation, until } => {
                self.expire_at(id, generation, until);
                Ok(Lease::Acquired)
            }
            Taken::Held(remaining) => Ok(Lease::Held { remaining }),
        }
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        let (key, owner) = (key.clone(), owner.clone());
        let now = Instant::now();
        self.blocking(move |inner| Ok(inner.release(&key, &owner, now)))
            .await
    }
}
