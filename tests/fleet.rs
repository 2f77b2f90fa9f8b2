//! A fleet sharing one login through a token store: several layers, each with
//! its own cache (as replicas in separate processes would have), on one
//! `MemoryStore` under paused time against a scripted endpoint, and on a real
//! `redis-server` against the crate's Daxium-compatible server with refresh
//! token reuse protection.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use daxium_auth::{AuthLayer, MemoryStore, TokenStore};
use futures_util::future::join_all;
use http::StatusCode;
use tower::{Layer, ServiceExt};

mod support;

use support::scripted::{Api, Endpoint, api_service, get, layer_with};

fn fleet(
    endpoint: &std::sync::Arc<Endpoint>,
    store: impl TokenStore + Clone,
    n: usize,
) -> Vec<AuthLayer> {
    (0..n)
        .map(|_| layer_with(endpoint, |b| b.store(store.clone())))
        .collect()
}

/// Drives every service once a second for `seconds`; every request succeeds.
async fn drive<S>(services: &[S], seconds: u64)
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<http_body_util::Full<bytes::Bytes>>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..seconds {
        let calls = services.iter().map(|svc| svc.clone().oneshot(get()));
        for res in join_all(calls).await {
            assert_eq!(res.unwrap().status(), StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_fleet_on_one_store_makes_the_grants_of_one_replica() {
    let api = std::sync::Arc::new(Api::default());
    // Ten lifetimes of 60 s tokens, for one replica alone and for 8 sharing.
    let solo = Endpoint::new(&api);
    *solo.lifetime.lock().unwrap() = Duration::from_secs(60);
    let alone = fleet(&solo, MemoryStore::new(), 1);
    drive(&[alone[0].layer(api_service(&api))], 600).await;

    let shared = Endpoint::new(&api);
    *shared.lifetime.lock().unwrap() = Duration::from_secs(60);
    let layers = fleet(&shared, MemoryStore::new(), 8);
    let services: Vec<_> = layers.iter().map(|l| l.layer(api_service(&api))).collect();
    drive(&services, 600).await;

    shared.assert_no_refresh_token_sent_twice();
    assert_eq!(shared.password.load(SeqCst), 1, "one login for the fleet");
    let (fleet_grants, solo_grants) = (shared.grants(), solo.grants());
    assert!(
        fleet_grants <= solo_grants + 4,
        "8 replicas made {fleet_grants} grants, one alone {solo_grants}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_stampede_on_an_empty_store_makes_one_grant() {
    let api = std::sync::Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    let layers = fleet(&endpoint, MemoryStore::new(), 8);
    let calls = layers.iter().flat_map(|layer| {
        let svc = layer.layer(api_service(&api));
        (0..1000).map(move |_| tokio::spawn(svc.clone().oneshot(get())))
    });
    for res in join_all(calls.collect::<Vec<_>>()).await {
        assert_eq!(res.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        endpoint.grants(),
        1,
        "8 replicas x 1,000 callers, one grant"
    );
}
