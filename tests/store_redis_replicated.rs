//! The Redis token store on replicated Redis, against real servers on
//! 127.0.0.1: a primary whose replica is promoted while the primary still
//! takes writes (the writes a failover loses), the store's epoch rule there.
#![cfg(feature = "redis")]

use std::time::Duration;

use daxium_auth::store::{RedisStore, TokenStore, WriteOutcome};

#[path = "support/store_contract.rs"]
mod contract;
#[allow(dead_code)]
#[path = "support/redis.rs"]
mod redis_server;

use redis_server::RedisServer;

/// One call's timeout: above the default, for a loaded test machine.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .timeout(STORE_TIMEOUT)
        .build()
        .expect("a valid URL")
}

/// Sends one command to the server at `url`.
async fn command<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis-server answers");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut connection).await.unwrap()
}

/// Waits (polling, at most 10 s) until `done` holds; whether it did.
async fn eventually<F: Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    for _ in 0..1_000 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The writes that a failover loses, made by hand: the replica is promoted
/// while the old primary still takes writes, so the spend mark that the old
/// primary acknowledges never reaches the new one. The new primary holds the
/// record with its refresh token usable; the store withholds the token and
/// refuses a spend mark over it.
#[tokio::test]
async fn a_record_from_before_a_promotion_never_has_its_refresh_token_spent_again() {
    let primary = RedisServer::start();
    let replica =
        RedisServer::with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let (old, new) = (store(&primary.url()), store(&replica.url()));
    let key = contract::key("epoch");
    assert_eq!(contract::put(&old, &key, None, "before").await, 1);
    // Replicated, and read on the replica with its refresh token: a replica
    // shares its primary's epoch.
    let replicated = eventually(|| async {
        new.read(&key)
            .await
            .is_ok_and(|r| r.is_some_and(|r| r.record().refresh_token().is_some()))
    })
    .await;
    assert!(replicated, "the record never reached the replica whole");

    let promoted: String = command(&replica.url(), &["REPLICAOF", "NO", "ONE"]).await;
    assert_eq!(promoted, "OK");
    let stored = old.read(&key).await.unwrap().expect("the record");
    let spent = stored.record().clone().with_refresh_spent();
    let marked = old.write(&key, Some(1), &spent).await.unwrap();
    assert_eq!(marked.version(), Some(2), "the old primary took the mark");

    // The new primary: version 1, its refresh token usable in Redis, withheld
    // by the store.
    let seen = new.read(&key).await.unwrap().expect("the record");
    assert_eq!(seen.version(), 1);
    assert!(seen.record().is_refresh_spent());
    assert!(seen.record().refresh_token().is_none());
    let envelope: Vec<u8> = command(
        &replica.url(),
        &["HGET", &format!("daxium-auth:{{{}}}", key.id()), "envelope"],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&envelope).contains("refresh-before"),
        "the token is still in the new primary's bytes"
    );

    // A spend mark over it is refused: a holder that read the record before
    // the failover makes a password grant instead.
    let refused = new.write(&key, Some(1), &spent).await.unwrap();
    let WriteOutcome::Conflict(conflict) = refused else {
        panic!("a spend mark over a record of another epoch was written: {refused:?}");
    };
    assert_eq!(conflict.version(), Some(1));
    assert!(
        conflict
            .record()
            .expect("readable")
            .record()
            .is_refresh_spent()
    );

    // A new pair (a password grant's) goes over it, in the new epoch, and
    // its refresh token is the fleet's again.
    assert_eq!(contract::put(&new, &key, Some(1), "after").await, 2);
    let after = new.read(&key).await.unwrap().expect("the new record");
    let refresh = after.record().refresh_token().expect("usable");
    assert_eq!(refresh.expose_secret(), "refresh-after");
    let spend = after.record().clone().with_refresh_spent();
    assert_eq!(
        new.write(&key, Some(2), &spend).await.unwrap().version(),
        Some(3)
    );
}
