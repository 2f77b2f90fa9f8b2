//! Redirects and the token. With tower-http's `FollowRedirect` above the
//! layer (`FollowRedirect<AuthService<Client>>`), every hop passes through
//! `AuthLayer`, whose origin guard decides per hop: a hop to another origin
//! (host, port or scheme) carries no token, whatever the redirect policy, and
//! a 401 there neither refreshes nor replays. Below the layer
//! (`AuthService<FollowRedirect<..>>`) the guard sees only the first URI: the
//! follower's own credential filter is then what keeps the token home.
//!
//! Two small HTTP servers on 127.0.0.1 (the API origin and another origin)
//! record the `Authorization` header of every request; the https→http
//! downgrade uses a `tower::service_fn` in place of TLS.
#![cfg(all(feature = "mock", feature = "rustls"))]

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{AuthLayer, ReplayBody};
use http::{Request, Response, StatusCode, header::AUTHORIZATION, header::LOCATION};
use http_body_util::{Empty, Full, combinators::BoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower::{Layer, ServiceExt};
use tower_http::{
    follow_redirect::{FollowRedirect, RequestUri, policy::Limited},
    map_request_body::MapRequestBodyLayer,
};

use crate::support;

use support::{fixed::FixedToken, scripted::credentials};

const TOKEN: &str = "redirect-test-token";
const BEARER: &str = "Bearer redirect-test-token";

// === a recording site ===

type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
type Routes = Arc<Mutex<HashMap<String, (StatusCode, Option<String>)>>>;

/// An HTTP/1 server on 127.0.0.1 that records the path and the
/// `Authorization` header of every request and answers from its routes
/// (200 for any other path).
struct Site {
    addr: SocketAddr,
    seen: Seen,
    routes: Routes,
    task: JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let routes = Routes::default();
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            let routes = Arc::clone(&routes);
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let seen = Arc::clone(&seen);
                    let routes = Arc::clone(&routes);
                    let service = service_fn(move |req: Request<Incoming>| {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
                        let auth = req
                            .headers()
                            .get(AUTHORIZATION)
                            .map(|v| v.to_str().unwrap().to_owned());
                        seen.lock().unwrap().push((path.clone(), auth));
                        let (status, location) = routes
                            .lock()
                            .unwrap()
                            .get(&path)
                            .cloned()
                            .unwrap_or((StatusCode::OK, None));
                        let mut res = Response::new(Full::new(Bytes::from(path)));
                        *res.status_mut() = status;
                        if let Some(location) = location {
                            res.headers_mut()
                                .insert(LOCATION, location.parse().unwrap());
                        }
                        async move { Ok::<_, Infallible>(res) }
                    });
                    connections.spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            seen,
            routes,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn route(&self, path: &str, status: StatusCode, location: Option<String>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, location));
    }

    fn take(&self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn layer_for(api: &Site, tokens: &FixedToken) -> AuthLayer {
    AuthLayer::builder()
        .credentials(credentials())
        .api_origin(api.url(""))
        .fetcher(tokens.clone())
        .build()
        .unwrap()
}

type Body = ReplayBody<Empty<Bytes>>;

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

fn with(path: &str, auth: bool) -> (String, Option<String>) {
    (path.to_owned(), auth.then(|| BEARER.to_owned()))
}

// === the follower above the layer ===

#[tokio::test]
async fn a_hop_to_another_origin_carries_no_token_whatever_the_policy() {
    let api = Site::start().await;
    let other = Site::start().await;
    let tokens = FixedToken::new(TOKEN);
    let layer = layer_for(&api, &tokens);
    let statuses = [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::SEE_OTHER,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ];
    for status in statuses {
        let path = format!("/hop-{}", status.as_u16());
        api.route(&path, status, Some(other.url("/landing")));
    }

    // tower-http's standard policy strips credentials across origins itself;
    // `Limited` alone does not, so there only the layer's guard stands.
    for standard in [true, false] {
        for status in statuses {
            let path = format!("/hop-{}", status.as_u16());
            let res = if standard {
                FollowRedirect::new(layer.layer(client()))
                    .oneshot(get(&api.url(&path)))
                    .await
            } else {
                FollowRedirect::with_policy(layer.layer(client()), Limited::new(5))
                    .oneshot(get(&api.url(&path)))
                    .await
            }
            .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.extensions().get::<RequestUri>().unwrap().0.to_string(),
                other.url("/landing")
            );
            assert_eq!(
                api.take(),
                [with(&path, true)],
                "{status} standard={standard}"
            );
            assert_eq!(
                other.take(),
                [with("/landing", false)],
                "{status} standard={standard}"
            );
        }
    }
    assert_eq!(tokens.grants(), 1);
}

#[tokio::test]
async fn a_hop_to_the_same_host_on_another_port_or_name_carries_no_token() {
    let api = Site::start().await;
    let tokens = FixedToken::new(TOKEN);
    let layer = layer_for(&api, &tokens);
    // Same host, a port nobody listens on: the follower's request fails, but
    // what matters is that the layer did not attach the token to it.
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let spy = {
        let recorded = Arc::clone(&recorded);
        tower::util::MapRequestLayer::new(move |req: Request<Body>| {
            recorded.lock().unwrap().push((
                req.uri().to_string(),
                req.headers().contains_key(AUTHORIZATION),
            ));
            req
        })
    };
    let free_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let elsewhere = [
        format!("http://127.0.0.1:{free_port}/landing"),
        format!("http://localhost:{}/landing", api.addr.port()),
        format!("https://127.0.0.1:{}/landing", api.addr.port()),
    ];
    for (i, location) in elsewhere.iter().enumerate() {
        let path = format!("/hop-{i}");
        api.route(&path, StatusCode::FOUND, Some(location.clone()));
        let svc = FollowRedirect::with_policy(layer.layer(spy.layer(client())), Limited::new(5));
        // The hop may fail (nothing listens, or no TLS): only the headers matter.
        let _ = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(get(&api.url(&path))))
            .await
            .expect("no hang");
        let seen = std::mem::take(&mut *recorded.lock().unwrap());
        assert_eq!(
            seen,
            [(api.url(&path), true), (location.clone(), false)],
            "{location}"
        );
    }
}

#[tokio::test]
async fn hops_within_the_api_origin_keep_the_token() {
    let api = Site::start().await;
    let other = Site::start().await;
    let tokens = FixedToken::new(TOKEN);
    let layer = layer_for(&api, &tokens);
    // A relative Location, then an absolute one, within the API origin.
    api.route("/a", StatusCode::FOUND, Some("/b".to_owned()));
    api.route("/b", StatusCode::TEMPORARY_REDIRECT, Some(api.url("/c")));
    let svc = FollowRedirect::with_policy(layer.layer(client()), Limited::new(5));
    let res = svc.oneshot(get(&api.url("/a"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        api.take(),
        [with("/a", true), with("/b", true), with("/c", true)]
    );

    // Out and back: the other origin never sees it; back home, it is attached
    // again (that origin is the API's).
    api.route("/out", StatusCode::FOUND, Some(other.url("/bounce")));
    other.route("/bounce", StatusCode::FOUND, Some(api.url("/home")));
    let svc = FollowRedirect::with_policy(layer.layer(client()), Limited::new(5));
    let res = svc.oneshot(get(&api.url("/out"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(api.take(), [with("/out", true), with("/home", true)]);
    assert_eq!(other.take(), [with("/bounce", false)]);
    assert_eq!(tokens.grants(), 1);
}

#[tokio::test]
async fn a_401_from_the_other_origin_neither_refreshes_nor_replays() {
    let api = Site::start().await;
    let other = Site::start().await;
    let tokens = FixedToken::new(TOKEN);
    let layer = layer_for(&api, &tokens);
    api.route("/hop", StatusCode::FOUND, Some(other.url("/denied")));
    other.route("/denied", StatusCode::UNAUTHORIZED, None);
    let svc = FollowRedirect::with_policy(layer.layer(client()), Limited::new(5));
    let res = svc.oneshot(get(&api.url("/hop"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.take(), [with("/hop", true)]);
    assert_eq!(other.take(), [with("/denied", false)]);
    assert_eq!(tokens.grants(), 1);
    let stats = layer.stats();
    assert_eq!((stats.replays, stats.replays_skipped), (0, 0));
}

#[tokio::test]
async fn a_downgrade_from_https_to_http_carries_no_token() {
    // The API origin is https on 127.0.0.1:PORT; the inner service stands in
    // for TLS and redirects to plain http on the same host and port.
    let port = 8443;
    let tokens = FixedToken::new(TOKEN);
    let layer = AuthLayer::builder()
        .credentials(credentials())
        .api_origin(format!("https://127.0.0.1:{port}"))
        .fetcher(tokens.clone())
        .build()
        .unwrap();
    let seen: Seen = Seen::default();
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |req: Request<Body>| {
            let auth = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            let uri = req.uri().to_string();
            seen.lock().unwrap().push((uri.clone(), auth));
            let mut res = Response::new(Full::<Bytes>::default());
            if req.uri().scheme_str() == Some("https") {
                *res.status_mut() = StatusCode::FOUND;
                res.headers_mut().insert(
                    LOCATION,
                    format!("http://127.0.0.1:{port}/next").parse().unwrap(),
                );
            }
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let start = format!("https://127.0.0.1:{port}/start");
    let next = format!("http://127.0.0.1:{port}/next");
    for standard in [true, false] {
        let res = if standard {
            FollowRedirect::new(layer.layer(inner.clone()))
                .oneshot(get(&start))
                .await
        } else {
            FollowRedirect::with_policy(layer.layer(inner.clone()), Limited::new(5))
                .oneshot(get(&start))
                .await
        }
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let recorded = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(
            recorded,
            [
                (start.clone(), Some(BEARER.to_owned())),
                (next.clone(), None)
            ],
            "standard={standard}"
        );
    }
    assert_eq!(tokens.grants(), 1);
}

// === the follower below the layer ===

/// `FollowRedirect` wants a body with `Default`; `ReplayBody` has none, so a
/// body adapter sits between the layer and the follower.
type Boxed = BoxBody<Bytes, Infallible>;

fn boxed_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Boxed> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn below_the_layer_the_guard_sees_only_the_first_uri() {
    let api = Site::start().await;
    let other = Site::start().await;
    let tokens = FixedToken::new(TOKEN);
    let layer = layer_for(&api, &tokens);
    api.route("/hop", StatusCode::FOUND, Some(other.url("/landing")));
    let adapter = MapRequestBodyLayer::new(|body: Body| Boxed::new(body));

    // With tower-http's standard policy, its `FilterCredentials` strips the
    // header on the cross-origin hop: the token stays home.
    let svc = layer.layer(adapter.layer(FollowRedirect::new(boxed_client())));
    let res = svc.oneshot(get(&api.url("/hop"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(api.take(), [with("/hop", true)]);
    assert_eq!(other.take(), [with("/landing", false)]);

    // With a policy that keeps headers, the follower copies the header the
    // layer set on the first request to every hop: the layer cannot see the
    // hops. This is why the follower belongs above the layer.
    let svc =
        layer.layer(adapter.layer(FollowRedirect::with_policy(boxed_client(), Limited::new(5))));
    let res = svc.oneshot(get(&api.url("/hop"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(api.take(), [with("/hop", true)]);
    assert_eq!(
        other.take(),
        [with("/landing", true)],
        "documents the hazard of the follower below the layer with a header-keeping policy"
    );
}

#[tokio::test]
async fn below_the_layer_a_final_401_replays_the_whole_chain_once() {
    let api = Site::start().await;
    let tokens = FixedToken::new(TOKEN);
    let layer = layer_for(&api, &tokens);
    api.route("/hop", StatusCode::FOUND, Some("/denied".to_owned()));
    api.route("/denied", StatusCode::UNAUTHORIZED, None);
    let adapter = MapRequestBodyLayer::new(|body: Body| Boxed::new(body));
    let svc = layer.layer(adapter.layer(FollowRedirect::new(boxed_client())));
    let res = svc.oneshot(get(&api.url("/hop"))).await.unwrap();
    // The replay met the same 401, which goes back as it is.
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.take(),
        [
            with("/hop", true),
            with("/denied", true),
            with("/hop", true),
            with("/denied", true)
        ]
    );
    // The 401 refused the token: one refresh (here, a new grant), one replay.
    assert_eq!(tokens.grants(), 2);
    assert_eq!(layer.stats().replays, 1);
}
