//! [`FileStoreBuilder`]: the settings of a [`FileStore`], and the directory
//! made for it.

use std::{
    collections::HashMap,
    fmt, fs,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use super::{FileStore, Inner, STORE, io_error};
use crate::store::{StoreError, check_call_timeout, codec::Codec};

/// Settings of a [`FileStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub struct FileStoreBuilder {
    pub(super) dir: PathBuf,
    pub(super) timeout: Duration,
    pub(super) codec: Codec,
}

impl FileStoreBuilder {
    /// How long one call may take, file I/O and lock waits included: 1 ms
    /// ..= 60 s (default [`FileStore::DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
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

    /// The store. Creates the directory (mode 0700 on unix) if it is missing;
    /// this blocks for that one call.
    pub fn build(self) -> Result<FileStore, StoreError> {
        check_call_timeout(self.timeout, STORE)?;
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(StoreError::config(STORE, "not a directory"));
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&self.dir)
            .map_err(|e| io_error(e, "cannot create the directory"))?;
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir: self.dir,
                timeout: self.timeout,
                codec: self.codec,
                leases: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
        })
    }
}

impl fmt::Debug for FileStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStoreBuilder")
            .field("dir", &self.dir)
            .field("timeout", &self.timeout)
            .field("sealed", &self.codec.is_sealed())
            .finish()
    }
}
