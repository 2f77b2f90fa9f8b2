//! Changes of login through `set_credentials`: while requests wait or a
//! grant is in flight, from outside the runtime, to another user, back and
//! forth, and with a store that holds the old login's record. Each request
//! carries a token of the login current when it was sent or later; a refused
//! password is not tried again before its cool-down, and the refusal of an old
//! password is not held against a new one. Under paused tokio time.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AccessToken, AuthLayer, Credentials, GrantType, MemoryStore, TokenStore, fetcher,
};
use futures_util::future::join_all;
use http::{Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

use crate::support;

use support::{
    scripted::{
        self, Api, Endpoint, Step, api_fn, api_service, bearer, builder, credentials_for, get,
        in_time, last_token, layer_with, pair, send, setup, setup_with,
    },
    stores::{bounded, login, ok},
};

// === one cache ===

/// Tokens name the user they were issued to: `tok-<user>-<n>`.
struct Users {
    issued: AtomicUsize,
    grants: Mutex<Vec<(GrantType, String)>>,
    refresh_owner: Mutex<HashMap<String, String>>,
}

#[tokio::test(start_paused = true)]
async fn a_grant_in_flight_for_the_previous_login_is_dropped_whole() {
    let users = Arc::new(Users {
        issued: AtomicUsize::new(0),
        grants: Mutex::new(Vec::new()),
        refresh_owner: Mutex::new(HashMap::new()),
    });
    let fetch_users = Arc::clone(&users);
    let layer = builder()
        .credentials(credentials_for("alice", "pw-a"))
        .fetcher(fetcher::from_fn(move |grant| {
            let users = Arc::clone(&fetch_users);
            async move {
                let user = match grant.refresh_token() {
                    Some(refresh) => {
                        let owners = users.refresh_owner.lock().unwrap();
                        owners[refresh.expose_secret()].clone()
                    }
                    None => grant.credentials().username().to_owned(),
                };
                users
                    .grants
                    .lock()
                    .unwrap()
                    .push((grant.grant_type(), user.clone()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = users.issued.fetch_add(1, SeqCst);
                let refresh = format!("ref-{user}-{n}");
                users
                    .refresh_owner
                    .lock()
                    .unwrap()
                    .insert(refresh.clone(), user.clone());
                pair(
                    &format!("tok-{user}-{n}"),
                    &refresh,
                    Duration::from_secs(60),
                )
            }
        }))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api_seen = Arc::clone(&seen);
    let api = api_fn(move |req| {
        api_seen.lock().unwrap().push(bearer(&req));
        async { Ok(Response::new(Full::default())) }
    });
    let svc = layer.layer(api);
    // Alice's login is in flight when the application switches to Bob.
    let alice = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    layer.set_credentials(credentials_for("bob", "pw-b"));
    seen.lock().unwrap().clear();
    let _ = alice.await.unwrap();
    for _ in 0..5 {
        send(&svc, get()).await.unwrap();
        // Past several refreshes of 60 s tokens.
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    for token in seen.lock().unwrap().iter() {
        let token = token.as_deref().expect("a token");
        assert!(
            token.starts_with("tok-bob-"),
            "a request after the switch carried {token}"
        );
    }
    let grants = users.grants.lock().unwrap();
    assert!(
        grants.iter().skip(1).all(|(_, user)| user == "bob"),
        "no grant for alice after the switch: {grants:?}"
    );
    assert!(
        grants.iter().any(|(g, _)| *g == GrantType::RefreshToken),
        "bob's session is refreshed"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_carry_the_new_login_after_set_credentials_from_outside_the_runtime() {
    let issued = Arc::new(AtomicUsize::new(0));
    let grants_for = Arc::new(Mutex::new(Vec::new()));
    let (n, log) = (Arc::clone(&issued), Arc::clone(&grants_for));
    let layer = AuthLayer::builder()
        .credentials(Credentials::new("client", "secret", "alice", "pw-a"))
        .api_origin("http://127.0.0.1:9")
        .fetcher(fetcher::from_fn(move |grant| {
            let user = match grant.refresh_token() {
                Some(refresh) => refresh
                    .expose_secret()
                    .split('-')
                    .nth(1)
                    .unwrap()
                    .to_owned(),
                None => grant.credentials().username().to_owned(),
            };
            log.lock().unwrap().push(user.clone());
            let n = n.fetch_add(1, SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                pair(
                    &format!("tok-{user}-{n}"),
                    &format!("ref-{user}-{n}"),
                    Duration::from_secs(3600),
                )
            }
        }))
        .build()
        .unwrap();
    let switched = Arc::new(AtomicBool::new(false));
    let after = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(vec!["tok-alice-0".to_owned()]));
    let (sw, seen, no) = (
        Arc::clone(&switched),
        Arc::clone(&after),
        Arc::clone(&refused),
    );
    let api = api_fn(move |req| {
        let token = bearer(&req).unwrap_or_default();
        if sw.load(SeqCst) {
            seen.lock().unwrap().push(token.clone());
        }
        let status = if no.lock().unwrap().contains(&token) {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        async move {
            Ok(Response::builder()
                .status(status)
                .body(Full::default())
                .unwrap())
        }
    });
    let svc = layer.layer(api);
    // Alice logs in; the API refuses her first token, the replay gets a new one.
    let first = in_time("first", send(&svc, get())).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(*grants_for.lock().unwrap(), ["alice", "alice"]);
    // The API refuses that one too. One request's replay waits for Alice's
    // refresh; another waits for a token.
    refused.lock().unwrap().push("tok-alice-1".to_owned());
    let replaying = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    switched.store(true, SeqCst);
    let bob = layer.clone();
    std::thread::spawn(move || {
        bob.set_credentials(Credentials::new("client", "secret", "bob", "pw-b"))
    })
    .join()
    .unwrap();
    for call in [replaying, waiting] {
        let res = in_time("after the switch", call).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let after = after.lock().unwrap().clone();
    assert_eq!(
        after.len(),
        2,
        "the replay and the waiting request: {after:?}"
    );
    assert!(
        after.iter().all(|t| t.starts_with("tok-bob-")),
        "requests after the switch carried {after:?}"
    );
    assert_eq!(grants_for.lock().unwrap().last().unwrap(), "bob");
}

/// A change to another user ends the old user's session: the old refresh
/// token is not used for the new user, who logs in.
#[tokio::test(start_paused = true)]
async fn set_credentials_for_another_user_ends_the_old_session() {
    let s = setup();
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    s.layer.cache().access_token().await.unwrap();
    s.layer.set_credentials(credentials_for("bob", "password"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(61)).await;
        s.layer.cache().access_token().await.unwrap();
    }
    let log = s.endpoint.log();
    assert!(
        log.iter().any(|g| g == "password:bob"),
        "bob never logged in: {log:?}"
    );
}

/// The refusal of the old password, landing after `set_credentials`, is not
/// held against the new one: the corrected password is tried at once, and
/// setting it again changes nothing.
#[tokio::test(start_paused = true)]
async fn a_rejection_of_old_credentials_does_not_block_new_ones() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    endpoint
        .refused_passwords
        .lock()
        .unwrap()
        .push("wrong".into());
    *endpoint.latency.lock().unwrap() = Duration::from_secs(1);
    let layer = layer_with(&endpoint, |b| {
        b.credentials(credentials_for("alice", "wrong"))
    });
    let svc = layer.layer(api_service::<Full<Bytes>>(&api));
    let first = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(100)).await; // the grant is in flight
    layer.set_credentials(credentials_for("alice", "right"));
    // Either outcome is fine for the call that raced the change.
    let _ = first.await.unwrap();

    layer.set_credentials(credentials_for("alice", "right")); // the user insists: no-op
    let res = svc.clone().oneshot(get()).await;
    assert_eq!(
        endpoint.log(),
        ["password:alice", "password:alice"],
        "the corrected password must be tried"
    );
    assert_eq!(res.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_refused_password_is_not_retried_before_its_cooldown_whatever_happens_meanwhile() {
    let s = setup_with(|b| b.rejected_cooldown(Duration::from_secs(300)));
    s.endpoint.push(Step::Reject);
    let svc = s.service();
    let cache = s.layer.cache().clone();
    let stranger = AccessToken::new("not-ours").unwrap();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(299) {
        let calls = (0..20).map(|_| svc.clone().oneshot(get()));
        for res in join_all(calls).await {
            assert!(res.unwrap_err().token_error().unwrap().is_grant_rejected());
        }
        assert!(cache.access_token().await.unwrap_err().is_grant_rejected());
        cache.token_rejected(&stranger);
        assert!(cache.replacement_for(&stranger).await.is_err());
        // The same login again changes nothing.
        s.layer.set_credentials(scripted::credentials());
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    assert_eq!(s.endpoint.grants(), 1, "retried within the cool-down");
    tokio::time::sleep_until(started + Duration::from_secs(301)).await;
    assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.endpoint.grants(), 2);
}

// === replicas sharing a store ===

#[tokio::test(start_paused = true)]
async fn a_replica_that_changes_login_mid_grant_does_not_stall_the_old_logins_fleet() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::from_secs(3);
    let store = MemoryStore::new();
    // Defaults: a 30 s lease, a 10 s wait budget.
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let (sa, sb) = (a.layer(api_service(&api)), b.layer(api_service(&api)));
    let first = tokio::spawn(async move { send(&sa, get()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Replica a moves to another account while it holds the lease.
    a.set_credentials(Credentials::new(
        "client",
        "client-secret",
        "other@example.com",
        "password",
    ));
    let res = bounded(&sb, Duration::from_secs(60))
        .await
        .expect("an answer");
    assert!(
        ok(&res),
        "replica b of the old login: {:?}",
        res.as_ref().err()
    );
    let _ = first.await;
}

#[tokio::test(start_paused = true)]
async fn after_a_change_of_login_no_request_carries_the_old_logins_token() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let sa = a.layer(api_service(&api));
    assert!(ok(&send(&sa, get()).await));
    let old = last_token(&api).unwrap();

    let other = Credentials::new("client", "client-secret", "other@example.com", "pw-2");
    a.cache().set_credentials(other.clone());
    for _ in 0..5 {
        assert!(ok(&send(&sa, get()).await));
        assert_ne!(last_token(&api).as_deref(), Some(old.as_str()));
    }
    assert_eq!(
        endpoint.log(),
        ["password:user@example.com", "password:other@example.com"]
    );
    // The old login's record is untouched, and a replica of it still adopts it.
    let stored = store.read(&login()).await.unwrap().unwrap();
    assert_eq!(stored.record().access_token().expose_secret(), old);
    let b = layer_with(&endpoint, |b| b.store(store.clone()));
    let sb = b.layer(api_service(&api));
    assert!(ok(&send(&sb, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some(old.as_str()));
    // A replica of the new login adopts the new login's record.
    let c = layer_with(&endpoint, |b| b.store(store.clone()).credentials(other));
    let sc = c.layer(api_service(&api));
    assert!(ok(&send(&sc, get()).await));
    assert_eq!(last_token(&api).as_deref(), Some("access-2"));
    assert_eq!(endpoint.grants(), 2);
    endpoint.assert_no_refresh_token_sent_twice();
}

#[tokio::test(start_paused = true)]
async fn switching_back_and_forth_between_logins_never_mixes_their_tokens() {
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let store = MemoryStore::new();
    let a = layer_with(&endpoint, |b| b.store(store.clone()));
    let sa = a.layer(api_service(&api));
    let users = ["user@example.com", "other@example.com"];
    let mut tokens: [HashSet<String>; 2] = Default::default();
    for round in 0..6 {
        let user = users[round % 2];
        a.set_credentials(Credentials::new(
            "client",
            "client-secret",
            user,
            "password",
        ));
        for _ in 0..3 {
            assert!(ok(&send(&sa, get()).await));
            tokens[round % 2].insert(last_token(&api).unwrap());
        }
    }
    assert!(tokens[0].is_disjoint(&tokens[1]), "{tokens:?}");
    // Each login logged in once: after that, the store gave each its own.
    assert_eq!(endpoint.password.load(SeqCst), 2, "{:?}", endpoint.log());
}
