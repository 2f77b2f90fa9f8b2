//! The file token store on a real directory: the store contract, private
//! files, atomic and version-checked writes under contention, a lease held by
//! another process until it dies, restarts, and sealed records; a loose
//! record file made private by the next write, a symlinked lock file that
//! is not followed, and a missing directory created private.
#![cfg(feature = "file")]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicUsize,
            Ordering::{self},
        },
        mpsc,
    },
    time::Duration,
};

use daxium_auth::{
    AccessToken, TokenStore,
    store::{AnyStore, FileStore, Lease, LeaseOwner, LoginKey, WriteOutcome},
};
use tempfile::TempDir;

use crate::support;

use support::{
    store_contract as contract,
    stores::{file_store, record_file},
};

fn dir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn store(dir: &TempDir) -> FileStore {
    FileStore::new(dir.path()).expect("a file store")
}

fn record_path(dir: &Path, key: &LoginKey) -> std::path::PathBuf {
    dir.join(format!("{}.json", key.id()))
}

#[tokio::test]
async fn compare_and_set_writes_only_over_the_expected_version() {
    let dir = dir();
    contract::compare_and_set(&store(&dir)).await;
}

#[tokio::test]
async fn one_owner_holds_the_lease_at_a_time() {
    let dir = dir();
    contract::one_lease_holder_at_a_time(&store(&dir)).await;
}

#[tokio::test]
async fn a_lease_lapses_after_its_ttl_and_another_owner_takes_it() {
    let dir = dir();
    contract::a_lease_lapses_after_its_ttl(&store(&dir), Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_record_of_another_login_is_never_read() {
    let dir = dir();
    contract::another_login_is_never_read(&store(&dir)).await;
}

#[tokio::test]
async fn a_waiter_wakes_when_another_store_on_the_directory_writes() {
    let dir = dir();
    contract::a_waiter_sees_another_handles_write(&store(&dir), &store(&dir)).await;
}

#[tokio::test]
async fn a_wait_without_a_write_ends_at_its_deadline() {
    let dir = dir();
    contract::a_wait_without_a_write_times_out(&store(&dir)).await;
}

#[cfg(unix)]
#[tokio::test]
async fn records_and_lock_files_are_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt;

    let parent = dir();
    let path = parent.path().join("created");
    let store = FileStore::new(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);

    let key = contract::key("private");
    contract::put(&store, &key, None, "one").await;
    contract::put(&store, &key, Some(1), "two").await;
    assert!(contract::takes(&store, &key, &LeaseOwner::random(), Duration::from_secs(5)).await);
    for suffix in [".json", ".lock", ".write.lock"] {
        let file = path.join(format!("{}{suffix}", key.id()));
        assert_eq!(mode(&file), 0o600, "{suffix}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_record() {
    let dir = dir();
    let store = store(&dir);
    let key = contract::key("atomic");
    let path = record_path(dir.path(), &key);
    let done = Arc::new(AtomicBool::new(false));
    let (parsed, broken) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, done) = (path.clone(), Arc::clone(&done));
            let (parsed, broken) = (Arc::clone(&parsed), Arc::clone(&broken));
            std::thread::spawn(move || {
                // Bounded: the writer's 200 writes, or 200,000 reads.
                for _ in 0..200_000 {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    match std::fs::read(&path) {
                        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                            Ok(_) => parsed.fetch_add(1, Ordering::Relaxed),
                            Err(_) => broken.fetch_add(1, Ordering::Relaxed),
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                        Err(e) => panic!("read failed: {e}"),
                    };
                }
            })
        })
        .collect();

    let mut version = None;
    for i in 0..200usize {
        // Lengths from 10 bytes to 8 KiB, so that a torn write would show.
        let token = "t".repeat(10 + (i * 811) % 8000);
        let record = contract::record("x");
        let record = daxium_auth::store::Record::new(
            AccessToken::new(&token).unwrap(),
            record.refresh_token().cloned(),
            record.expires_at(),
        );
        match store.write(&key, version, &record).await.unwrap() {
            WriteOutcome::Written { version: v } => version = Some(v),
            other => panic!("a lone writer conflicted: {other:?}"),
        }
        let read = store
            .read(&key)
            .await
            .unwrap()
            .expect("the record just written");
        assert_eq!(read.record().access_token().expose_secret(), token);
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().unwrap();
    }

    assert_eq!(version, Some(200));
    assert_eq!(
        broken.load(Ordering::Relaxed),
        0,
        "a reader saw a partial file"
    );
    assert!(
        parsed.load(Ordering::Relaxed) > 0,
        "the readers read nothing"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_never_both_write_over_one_version() {
    const TASKS: usize = 4;
    const WRITES: usize = 25;
    let dir = dir();
    let key = contract::key("contended");
    let stores = [store(&dir), store(&dir)];
    let mut tasks = Vec::new();
    for i in 0..TASKS * 2 {
        let (store, key) = (stores[i % 2].clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            // Bounded: each turn either writes or learns a newer version.
            for _ in 0..10_000 {
                if mine == WRITES {
                    break;
                }
                let current = store.read(&key).await.unwrap().map(|r| r.version());
                match store.write(&key, current, &contract::record("c")).await {
                    Ok(WriteOutcome::Written { .. }) => mine += 1,
                    Ok(_) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            mine
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, TASKS * 2 * WRITES);
    let stored = stores[0].read(&key).await.unwrap().unwrap();
    assert_eq!(stored.version(), u64::try_from(total).unwrap());
}

#[tokio::test]
async fn a_restarted_store_adopts_the_record() {
    let dir = dir();
    let key = contract::key("restart");
    {
        let first = store(&dir);
        contract::put(&first, &key, None, "one").await;
        contract::put(&first, &key, Some(1), "two").await;
        assert!(
            contract::takes(&first, &key, &LeaseOwner::random(), Duration::from_secs(60)).await
        );
    }
    let second = store(&dir);
    let adopted = second.read(&key).await.unwrap().expect("the stored record");
    assert_eq!(adopted.version(), 2);
    assert_eq!(
        adopted.record().access_token().expose_secret(),
        "access-two"
    );
    assert_eq!(
        adopted.record().refresh_token().unwrap().expose_secret(),
        "refresh-two"
    );
    contract::put(&second, &key, Some(2), "three").await;
    // The first store is gone, and its lease with it.
    assert!(contract::takes(&second, &key, &LeaseOwner::random(), Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_lease_of_one_store_lapses_for_another_after_its_ttl() {
    let dir = dir();
    let (holder, other) = (store(&dir), store(&dir));
    let key = contract::key("lapse-across");
    let ttl = Duration::from_millis(300);
    assert!(contract::takes(&holder, &key, &LeaseOwner::random(), ttl).await);
    match other
        .acquire_lease(&key, &LeaseOwner::random(), ttl)
        .await
        .unwrap()
    {
        Lease::Held { remaining } => {
            let remaining = remaining.expect("the holder wrote its expiry");
            assert!(remaining <= ttl, "{remaining:?}");
        }
        Lease::Acquired => panic!("two stores hold one lease"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(ttl * 2).await;
    assert!(contract::takes(&other, &key, &LeaseOwner::random(), ttl).await);
}

const CHILD_DIR: &str = "DAXIUM_AUTH_TEST_LEASE_DIR";
const CHILD_READY: &str = "LEASE-HELD";

/// Kills the child process when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "the other process of a_lease_held_by_another_process_lasts_until_it_dies"]
async fn child_process_holds_the_lease() {
    let own = dir();
    let path = std::env::var(CHILD_DIR).map_or_else(|_| own.path().to_owned(), Into::into);
    let store = FileStore::new(&path).unwrap();
    let key = contract::key("other-process");
    assert!(contract::takes(&store, &key, &LeaseOwner::random(), Duration::from_secs(60)).await);
    contract::put(&store, &key, None, "child").await;
    if std::env::var_os(CHILD_DIR).is_some() {
        println!("{CHILD_READY}");
        // Held until the parent kills this process; bounded all the same.
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test]
async fn a_lease_held_by_another_process_lasts_until_it_dies() {
    let dir = dir();
    // The test's name in this binary: its module path without the crate.
    let module = module_path!().split_once("::").map_or("", |(_, path)| path);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::child_process_holds_the_lease"),
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary runs again");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim() == CHILD_READY {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child took the lease");

    let store = store(&dir);
    let key = contract::key("other-process");
    match store
        .acquire_lease(&key, &LeaseOwner::random(), Duration::from_secs(5))
        .await
        .unwrap()
    {
        Lease::Held { remaining } => {
            let remaining = remaining.expect("the child wrote its expiry");
            assert!(remaining > Duration::from_secs(30), "{remaining:?}");
        }
        other => panic!("two processes hold one lease: {other:?}"),
    }
    let written = store.read(&key).await.unwrap().expect("the child's record");
    assert_eq!(
        written.record().access_token().expose_secret(),
        "access-child"
    );

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // The lock went with the process.
    assert!(contract::takes(&store, &key, &LeaseOwner::random(), Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_copied_record_file_is_not_read_for_another_login() {
    let dir = dir();
    let store = store(&dir);
    let alice = LoginKey::new("cid", "alice@example.com");
    let bob = LoginKey::new("cid", "bob@example.com");
    contract::put(&store, &alice, None, "alice").await;
    std::fs::copy(
        record_path(dir.path(), &alice),
        record_path(dir.path(), &bob),
    )
    .unwrap();

    // The file's version shows in the conflict, and a write over it replaces it.
    contract::an_unreadable_record_is_replaced_over_its_version(&store, &bob, 1).await;
    let read = store.read(&alice).await.unwrap().unwrap();
    assert_eq!(read.record().access_token().expose_secret(), "access-alice");
}

#[tokio::test]
async fn a_damaged_record_reads_as_absent_and_is_replaced() {
    let dir = dir();
    let store = store(&dir);
    let key = contract::key("damaged");
    std::fs::write(record_path(dir.path(), &key), b"{\"format\":1,\"login\":").unwrap();
    assert!(store.read(&key).await.unwrap().is_none());
    assert_eq!(contract::put(&store, &key, None, "new").await, 1);
    assert_eq!(store.read(&key).await.unwrap().unwrap().version(), 1);
}

#[tokio::test]
async fn a_path_that_is_a_file_is_refused() {
    let dir = dir();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    let err = FileStore::new(&file).unwrap_err();
    assert!(err.is_config(), "{err:?}");
    for timeout in [Duration::ZERO, Duration::from_secs(61)] {
        let err = FileStore::builder(dir.path())
            .timeout(timeout)
            .build()
            .unwrap_err();
        assert!(err.is_config(), "{timeout:?}");
    }
}

#[tokio::test]
async fn a_file_url_opens_a_file_store() {
    let dir = dir();
    let url = format!("file://{}", dir.path().display());
    let store = AnyStore::from_url(&url).unwrap();
    let key = contract::key("url");
    contract::put(&store, &key, None, "u").await;
    assert!(record_path(dir.path(), &key).exists());
    assert!(
        AnyStore::from_url("file://relative/path")
            .unwrap_err()
            .is_config()
    );
}

#[cfg(feature = "sealed")]
mod sealed {
    use daxium_auth::store::SealKey;

    use super::*;

    fn sealed_store(dir: &TempDir, key: [u8; 32]) -> FileStore {
        FileStore::builder(dir.path())
            .seal(SealKey::new(key))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_sealed_record_file_holds_no_token() {
        let dir = dir();
        let store = sealed_store(&dir, [3; 32]);
        let key = LoginKey::new("cid", "sentinel-user@example.com");
        let record = contract::record("sentinel");
        assert!(store.write(&key, None, &record).await.unwrap().is_written());
        let bytes = std::fs::read(record_path(dir.path(), &key)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("sentinel"), "{text}");
        assert!(text.contains("\"sealed\""));
        let read = store.read(&key).await.unwrap().unwrap();
        assert_eq!(
            read.record().access_token().expose_secret(),
            "access-sentinel"
        );
        assert_eq!(
            read.record().refresh_token().unwrap().expose_secret(),
            "refresh-sentinel"
        );
    }

    #[tokio::test]
    async fn a_wrong_seal_key_reads_as_absent_and_can_write_over() {
        let dir = dir();
        let key = contract::key("wrong-seal");
        let right = sealed_store(&dir, [4; 32]);
        contract::put(&right, &key, None, "right").await;

        assert!(store(&dir).read(&key).await.unwrap().is_none());
        let wrong = sealed_store(&dir, [5; 32]);
        contract::an_unreadable_record_is_replaced_over_its_version(&wrong, &key, 1).await;
        assert!(right.read(&key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_sealing_store_refuses_a_record_in_clear() {
        let dir = dir();
        let key = contract::key("planted");
        contract::put(&store(&dir), &key, None, "planted").await;
        assert!(
            sealed_store(&dir, [6; 32])
                .read(&key)
                .await
                .unwrap()
                .is_none()
        );
    }
}

// === the directory and its files ===

#[tokio::test]
async fn a_loose_record_file_is_read_and_the_next_write_makes_it_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("loose");
    contract::put(&store, &key, None, "first").await;
    let path = record_file(&dir, &key);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(store.read(&key).await.unwrap().unwrap().version(), 1);
    contract::put(&store, &key, Some(1), "second").await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

#[tokio::test]
async fn a_symlinked_lock_file_does_not_clobber_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let store = file_store(&dir);
    let key = contract::key("lock-link");
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, b"precious data that is not a lease").unwrap();
    let lock = dir.path().join(format!("{}.lock", key.id()));
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let owner = LeaseOwner::random();
    let taken = store
        .acquire_lease(&key, &owner, Duration::from_secs(1))
        .await;
    assert!(taken.is_err(), "a symlinked lock file is refused");
    let _ = store.release_lease(&key, &owner).await;
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious data that is not a lease"
    );
}

#[tokio::test]
async fn a_file_store_in_a_missing_directory_creates_it_private() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/c");
    let store = FileStore::new(&dir).unwrap();
    let key = contract::key("missing");
    assert!(store.read(&key).await.unwrap().is_none());
    contract::put(&store, &key, None, "made").await;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
}
