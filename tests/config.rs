//! Configuration: the https rule (`http://` only for loopback hosts), the
//! origin guard (the token goes to the configured API origins only, compared
//! by scheme, host and port; relative URIs get it), the token endpoint that a
//! store files the login under, and bad builder input, which is always a
//! typed `BuildError`, never a panic. Extreme settings at work, under paused
//! time: the largest neither panic nor hang, an endless backoff fails fast,
//! and a zero refresh margin uses a token up to its expiry, not past it.
#![cfg(feature = "rustls")]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use daxium_auth::{
    AuthLayer, AuthLayerBuilder, BuildError, Credentials, HttpFetcher, MemoryStore, ReplayBody,
    TokenError, TokenPair, fetcher,
};
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Full;
use proptest::prelude::*;
use tower::{Layer, ServiceExt};

use crate::support;

use support::{
    fixed::FixedToken,
    scripted::{
        Api, Endpoint, Step, builder, credentials, get, in_time, seen_tokens, send, setup_with,
    },
};

const TOKEN: &str = "tok-123";

/// The inner service: records the URI and the `Authorization` header of
/// every request, and answers `status`.
/// Each request's URI and `Authorization` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[derive(Clone, Default)]
struct Recorder {
    seen: Seen,
}

impl Recorder {
    fn service(
        &self,
        status: StatusCode,
    ) -> impl tower::Service<
        Request<ReplayBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let seen = Arc::clone(&self.seen);
        tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let auth = req.headers().get(AUTHORIZATION).map(|v| {
                assert!(v.is_sensitive());
                v.to_str().unwrap().to_owned()
            });
            seen.lock().unwrap().push((req.uri().to_string(), auth));
            let mut res = Response::new(Full::default());
            *res.status_mut() = status;
            async move { Ok::<_, Infallible>(res) }
        })
    }

    fn take(&self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Sends a GET to each URI through `layer`, and says which carried the token.
async fn tokens_sent(layer: &AuthLayer, uris: &[&str]) -> Vec<(String, bool)> {
    let recorder = Recorder::default();
    let svc = layer.layer(recorder.service(StatusCode::OK));
    for uri in uris {
        let req = Request::get(*uri).body(Full::default()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    recorder
        .take()
        .into_iter()
        .map(|(uri, auth)| {
            if let Some(auth) = &auth {
                assert_eq!(auth, &format!("Bearer {TOKEN}"));
            }
            (uri, auth.is_some())
        })
        .collect()
}

/// Which of `uris` carried the token, through a layer built from `builder`.
async fn carried(builder: AuthLayerBuilder, uris: &[&str]) -> Vec<bool> {
    let layer = builder.fetcher(FixedToken::new(TOKEN)).build().unwrap();
    let sent = tokens_sent(&layer, uris).await;
    sent.into_iter().map(|(_, carried)| carried).collect()
}

/// A layer for `https://api.example.com` whose token `tokens` issues.
fn api_layer(tokens: &FixedToken) -> AuthLayer {
    base()
        .api_origin("https://api.example.com")
        .fetcher(tokens.clone())
        .build()
        .unwrap()
}

fn base() -> AuthLayerBuilder {
    AuthLayer::builder().credentials(credentials())
}

// === the https rule ===

const INSECURE: &[&str] = &[
    "http://api.daxium-air.com/oauth/v2/token",
    "http://10.0.0.1/oauth/v2/token",
    "http://192.168.1.1:8080/",
    "http://localhost.evil.com/",
    "http://127.0.0.1.nip.io/",
    "http://[::ffff:127.0.0.1]/",
    "http://[2001:db8::1]/",
    "http://0.0.0.0/",
    // Shorthand and numeric forms of 127.0.0.1: refused rather than guessed.
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
];

const LOOPBACK: &[&str] = &[
    "http://127.0.0.1:8080/oauth/v2/token",
    "http://127.0.0.1/",
    "http://127.9.9.9:1/",
    "http://localhost/oauth/v2/token",
    "http://LOCALHOST:99/",
    "http://[::1]:8080/",
    "HTTP://127.0.0.1/",
];

#[test]
fn http_token_urls_are_refused_unless_loopback() {
    let tokens = FixedToken::new(TOKEN);
    for url in INSECURE {
        let expected = Err(BuildError::InsecureUrl { what: "token" });
        assert_eq!(
            base().token_url(*url).build().map(drop),
            expected,
            "builder {url}"
        );
        assert_eq!(
            AuthLayer::new(url, credentials()).map(drop),
            expected,
            "new {url}"
        );
        assert_eq!(HttpFetcher::new(url).map(drop), expected, "fetcher {url}");
        // Even with a custom fetcher: the token URL names the API origin.
        assert_eq!(
            base()
                .token_url(*url)
                .fetcher(tokens.clone())
                .build()
                .map(drop),
            expected,
            "custom fetcher {url}"
        );
    }
    for url in LOOPBACK {
        assert!(base().token_url(*url).build().is_ok(), "{url}");
        assert!(AuthLayer::new(url, credentials()).is_ok(), "{url}");
        assert!(HttpFetcher::new(url).is_ok(), "{url}");
    }
    for url in [
        "https://api.daxium-air.com/oauth/v2/token",
        "https://10.0.0.1/",
        "HTTPS://API.DAXIUM-AIR.COM/oauth/v2/token",
    ] {
        assert!(base().token_url(url).build().is_ok(), "{url}");
    }
    assert_eq!(tokens.grants(), 0, "building never makes a grant");
}

#[test]
fn http_api_origins_are_refused_unless_loopback() {
    for url in INSECURE {
        assert_eq!(
            base()
                .token_url("https://api.daxium-air.com/oauth/v2/token")
                .api_origin(*url)
                .build()
                .map(drop),
            Err(BuildError::InsecureUrl { what: "API origin" }),
            "{url}"
        );
    }
    for url in LOOPBACK {
        assert!(
            base()
                .token_url("https://api.daxium-air.com/oauth/v2/token")
                .api_origin(*url)
                .build()
                .is_ok(),
            "{url}"
        );
    }
    // One bad origin among good ones spoils the build.
    assert_eq!(
        base()
            .token_url("https://api.daxium-air.com/oauth/v2/token")
            .api_origin("https://a.example.com")
            .api_origin("http://b.example.com")
            .build()
            .map(drop),
        Err(BuildError::InsecureUrl { what: "API origin" })
    );
}

// === the origin guard ===

#[tokio::test]
async fn the_token_goes_to_the_api_origin_only() {
    let tokens = FixedToken::new(TOKEN);
    let layer = api_layer(&tokens);
    let cases: &[(&str, bool)] = &[
        ("https://api.example.com/api/v1/items", true),
        ("https://API.Example.COM/api/v1/items", true),
        ("https://api.example.com:443/api", true),
        ("https://api.example.com", true),
        (
            "https://api.example.com/?next=https://evil.example.com/",
            true,
        ),
        // A relative URI: the inner service fixes the destination.
        ("/api/v1/items", true),
        ("/", true),
        // Another scheme, port or host.
        ("http://api.example.com/api/v1/items", false),
        ("http://api.example.com:443/api", false),
        ("https://api.example.com:8443/api", false),
        ("https://api.example.com:80/api", false),
        ("https://evil.example.com/api", false),
        ("https://api.example.com.evil.com/api", false),
        ("https://example.com/api", false),
        ("https://evil.com/?https://api.example.com/", false),
        ("https://127.0.0.1/api", false),
        ("https://[::1]/api", false),
    ];
    let uris: Vec<&str> = cases.iter().map(|(uri, _)| *uri).collect();
    let sent = tokens_sent(&layer, &uris).await;
    assert_eq!(sent.len(), cases.len());
    for ((uri, expected), (seen_uri, carried)) in cases.iter().zip(&sent) {
        assert_eq!(carried, expected, "{uri} (seen as {seen_uri})");
    }
    assert_eq!(tokens.grants(), 1);

    // Requests elsewhere never start a grant.
    let fresh = FixedToken::new(TOKEN);
    let layer = api_layer(&fresh);
    let foreign: Vec<&str> = cases
        .iter()
        .filter(|(_, carried)| !carried)
        .map(|(uri, _)| *uri)
        .collect();
    let sent = tokens_sent(&layer, &foreign).await;
    assert!(sent.iter().all(|(_, carried)| !carried));
    assert_eq!(fresh.grants(), 0, "no grant for foreign origins");
    assert_eq!(layer.stats().waited, 0);
}

#[tokio::test]
async fn the_default_origin_is_the_token_urls() {
    let sent = carried(
        base().token_url("https://auth.example.com/oauth/v2/token"),
        &[
            "https://auth.example.com/api/v1/items",
            "https://api.example.com/api/v1/items",
            "http://auth.example.com/api/v1/items",
        ],
    )
    .await;
    assert_eq!(sent, [true, false, false]);

    // A loopback token URL: its exact port only.
    let sent = carried(
        base().token_url("http://127.0.0.1:8080/oauth/v2/token"),
        &[
            "http://127.0.0.1:8080/api",
            "http://127.0.0.1:8081/api",
            "http://localhost:8080/api",
            "https://127.0.0.1:8080/api",
        ],
    )
    .await;
    assert_eq!(sent, [true, false, false, false]);
}

#[tokio::test]
async fn api_origins_replace_the_default_and_add_up() {
    let sent = carried(
        base()
            .token_url("https://auth.example.com/oauth/v2/token")
            .api_origin("https://a.example.com")
            .api_origin("https://b.example.com:8443/ignored/path?and=query"),
        &[
            "https://a.example.com/x",
            "https://b.example.com:8443/x",
            "https://b.example.com/x",
            // Configured API origins replace the default.
            "https://auth.example.com/x",
        ],
    )
    .await;
    assert_eq!(sent, [true, true, false, false]);

    // `any_origin`: every request, for inner services that fix the destination.
    let sent = carried(
        base()
            .token_url("https://auth.example.com/oauth/v2/token")
            .any_origin(),
        &["https://a.example.com/x", "http://b.example.com/x", "/x"],
    )
    .await;
    assert_eq!(sent, [true, true, true]);
}

#[tokio::test]
async fn a_401_from_another_origin_neither_refreshes_nor_replays() {
    let tokens = FixedToken::new(TOKEN);
    let layer = api_layer(&tokens);
    // Get a token first.
    layer.cache().access_token().await.unwrap();
    let recorder = Recorder::default();
    let svc = layer.layer(recorder.service(StatusCode::UNAUTHORIZED));
    let req = Request::get("https://evil.example.com/")
        .body(Full::default())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        recorder.take(),
        [("https://evil.example.com/".to_owned(), None)]
    );
    assert_eq!(tokens.grants(), 1);
    assert_eq!(
        (layer.stats().replays, layer.stats().replays_skipped),
        (0, 0)
    );
}

// === bad input ===

#[test]
fn bad_builder_input_is_a_typed_error() {
    let tokens = FixedToken::new(TOKEN);
    let token = "https://api.daxium-air.com/oauth/v2/token";
    let ms = Duration::from_millis;
    type Case = (
        &'static str,
        Box<dyn Fn() -> AuthLayerBuilder>,
        fn(&BuildError) -> bool,
    );
    let g = tokens.clone();
    let cases: Vec<Case> = vec![
        ("nothing at all", Box::new(AuthLayer::builder), |e| {
            matches!(e, BuildError::Missing("credentials"))
        }),
        (
            "no credentials",
            Box::new(move || AuthLayer::builder().token_url(token)),
            |e| matches!(e, BuildError::Missing("credentials")),
        ),
        ("no token URL, no fetcher, no origin", Box::new(base), |e| {
            matches!(e, BuildError::Missing(_))
        }),
        (
            "an origin but no token URL and no fetcher",
            Box::new(|| base().api_origin("https://api.example.com")),
            |e| matches!(e, BuildError::Missing("token_url or fetcher")),
        ),
        (
            "a fetcher but no token URL and no origin",
            Box::new(move || base().fetcher(g.clone())),
            |e| matches!(e, BuildError::Missing(_)),
        ),
        (
            "backoff min above max",
            Box::new(move || base().token_url(token).backoff(ms(500), ms(100))),
            |e| {
                matches!(
                    e,
                    BuildError::InvalidSetting {
                        name: "backoff",
                        ..
                    }
                )
            },
        ),
        (
            "zero backoff",
            Box::new(move || base().token_url(token).backoff(Duration::ZERO, ms(100))),
            |e| {
                matches!(
                    e,
                    BuildError::InvalidSetting {
                        name: "backoff",
                        ..
                    }
                )
            },
        ),
        (
            "zero backoff, both",
            Box::new(move || {
                base()
                    .token_url(token)
                    .backoff(Duration::ZERO, Duration::ZERO)
            }),
            |e| {
                matches!(
                    e,
                    BuildError::InvalidSetting {
                        name: "backoff",
                        ..
                    }
                )
            },
        ),
    ];
    let mut cases = cases;
    let garbage: &[(&str, &str)] = &[
        ("", "does not parse"),
        ("not a url", "does not parse"),
        ("https://", "does not parse"),
        ("https:///path", "does not parse"),
        ("https://exa mple.com/", "does not parse"),
        ("https://exämple.com/", "does not parse"),
        (" https://api.example.com/", "does not parse"),
        ("https://[::1/", "does not parse"),
        ("/relative/path", "not absolute"),
        ("//api.example.com/path", "not absolute"),
        ("api.example.com", "not absolute"),
        ("mailto:user@example.com", "not absolute"),
        (
            "ftp://api.example.com/oauth",
            "scheme is neither http nor https",
        ),
        ("ws://127.0.0.1/", "scheme is neither http nor https"),
        ("file:///etc/passwd", "does not parse"),
    ];
    for (url, _) in garbage {
        cases.push((url, Box::new(move || base().token_url(*url)), |e| {
            matches!(e, BuildError::InvalidUrl { what: "token", .. })
        }));
        cases.push((
            url,
            Box::new(move || base().token_url(token).api_origin(*url)),
            |e| {
                matches!(
                    e,
                    BuildError::InvalidUrl {
                        what: "API origin",
                        ..
                    }
                )
            },
        ));
    }
    cases.push((
        "user info in the token URL",
        Box::new(|| base().token_url("https://user:pass@api.example.com/oauth/v2/token")),
        |e| matches!(e, BuildError::InvalidUrl { what: "token", .. }),
    ));
    for (what, make, expected) in &cases {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make().build()));
        let err = match result {
            Ok(Ok(_)) => panic!("{what:?}: built"),
            Ok(Err(err)) => err,
            Err(_) => panic!("{what:?}: panicked"),
        };
        assert!(expected(&err), "{what:?}: {err:?}");
        // A typed error says what is wrong, in one line, without the URL.
        let text = err.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text}");
        assert!(!text.contains("example.com"), "{text}");
    }
    for (url, reason) in garbage {
        let err = base().token_url(*url).build().unwrap_err();
        assert_eq!(
            err,
            BuildError::InvalidUrl {
                what: "token",
                reason,
            },
            "{url:?}"
        );
    }
    assert_eq!(tokens.grants(), 0);
}

#[test]
fn extreme_settings_build_and_edge_settings_are_accepted() {
    type Setting = fn(AuthLayerBuilder) -> AuthLayerBuilder;
    let settings: [(&str, Setting); 9] = [
        ("the longest backoff", |b| {
            b.backoff(Duration::MAX, Duration::MAX)
        }),
        ("the shortest backoff", |b| {
            b.backoff(Duration::from_nanos(1), Duration::from_nanos(1))
        }),
        ("no refresh margin", |b| b.refresh_margin(Duration::ZERO)),
        ("the longest refresh margin", |b| {
            b.refresh_margin(Duration::MAX)
        }),
        ("the shortest cool-down", |b| {
            b.rejected_cooldown(Duration::from_nanos(1))
        }),
        ("the longest cool-down", |b| {
            b.rejected_cooldown(Duration::MAX)
        }),
        ("a replay limit of zero", |b| b.replay_limit(0)),
        ("the largest replay limit", |b| b.replay_limit(usize::MAX)),
        ("replay off", |b| b.replay(false)),
    ];
    for (what, setting) in settings {
        let builder = base().token_url("https://api.daxium-air.com/oauth/v2/token");
        assert_eq!(setting(builder).build().map(drop), Ok(()), "{what}");
    }
    // A zero cool-down would try a refused password on every request; a zero
    // lease would hand the fleet's lease around on every grant; a zero store
    // timeout would fail every store call before it started.
    let base = || base().token_url("https://api.daxium-air.com/oauth/v2/token");
    assert!(matches!(
        base().rejected_cooldown(Duration::ZERO).build().map(drop),
        Err(BuildError::InvalidSetting {
            name: "rejected_cooldown",
            ..
        })
    ));
    assert!(matches!(
        base().lease_ttl(Duration::ZERO).build().map(drop),
        Err(BuildError::InvalidSetting {
            name: "lease_ttl",
            ..
        })
    ));
    assert!(matches!(
        base().store_timeout(Duration::ZERO).build().map(drop),
        Err(BuildError::InvalidSetting {
            name: "store_timeout",
            ..
        })
    ));
    assert_eq!(
        base()
            .store_timeout(Duration::from_nanos(1))
            .build()
            .map(drop),
        Ok(())
    );
}

/// A store files the login under its token endpoint: a fetcher that names
/// none needs the token URL; the default one, and an `HttpFetcher`, name theirs.
#[test]
fn a_store_needs_the_token_endpoint() {
    let with_store = || {
        base()
            .api_origin("https://api.example.com")
            .store(MemoryStore::new())
    };
    let err = with_store()
        .fetcher(FixedToken::new(TOKEN))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, BuildError::Missing(what) if what.starts_with("token_url")),
        "{err:?}"
    );
    let token_url = "https://api.daxium-air.com/oauth/v2/token";
    let named = [
        with_store()
            .fetcher(FixedToken::new(TOKEN))
            .token_url(token_url),
        with_store().fetcher(HttpFetcher::new(token_url).unwrap()),
        with_store().token_url(token_url),
    ];
    for builder in named {
        assert!(builder.build().is_ok());
    }
    // Without a store, no endpoint is needed.
    let alone = base()
        .api_origin("https://api.example.com")
        .fetcher(FixedToken::new(TOKEN));
    assert!(alone.build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn extreme_timings_keep_working() {
    // The largest backoff and margins: a grant failure still fails fast
    // (nothing overflows), and a token is still used.
    let api = Arc::new(Api::default());
    let endpoint = Endpoint::new(&api);
    *endpoint.latency.lock().unwrap() = Duration::ZERO;
    endpoint.push(Step::Error(daxium_auth::TokenError::timeout()));
    let layer = base()
        .api_origin("https://api.example.com")
        .backoff(Duration::MAX, Duration::MAX)
        .refresh_margin(Duration::MAX)
        .rejected_cooldown(Duration::MAX)
        .fetcher(endpoint.fetcher())
        .build()
        .unwrap();
    let err = layer.cache().access_token().await.unwrap_err();
    assert!(err.is_timeout());
    // During the (endless) backoff, callers fail fast with the same error.
    for _ in 0..100 {
        assert!(layer.cache().access_token().await.unwrap_err().is_timeout());
    }
    assert_eq!(endpoint.grants(), 1);

    // And a huge refresh margin on a short token: refreshed at half-life,
    // never on every request.
    let tokens = FixedToken::new(TOKEN).lifetime(Duration::from_secs(10));
    let layer = base()
        .api_origin("https://api.example.com")
        .refresh_margin(Duration::MAX)
        .fetcher(tokens.clone())
        .build()
        .unwrap();
    for _ in 0..100 {
        layer.cache().access_token().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 10 s of 10 s tokens, stale at 4-5 s: 1 + 2 or 3 refreshes.
    let n = tokens.grants();
    assert!((2..=4).contains(&n), "{n} grants");
}

#[test]
fn a_port_out_of_range_is_refused() {
    for url in [
        "https://api.example.com:99999/",
        "https://api.example.com:999999999999/",
        "https://api.example.com:abc/",
        "http://127.0.0.1:65536/oauth/v2/token",
    ] {
        assert!(
            matches!(
                base().token_url(url).build(),
                Err(BuildError::InvalidUrl { what: "token", .. })
            ),
            "token {url}"
        );
        assert!(
            matches!(
                base()
                    .token_url("https://api.daxium-air.com/oauth/v2/token")
                    .api_origin(url)
                    .build(),
                Err(BuildError::InvalidUrl {
                    what: "API origin",
                    ..
                })
            ),
            "origin {url}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any string as a token URL or an API origin: a layer or a typed error,
    /// and a layer only for `https://`, or `http://` to a loopback host.
    #[test]
    fn any_url_is_a_layer_or_a_typed_error(
        url in prop_oneof![
            ".{0,40}",
            "(https?|HTTPS?|ftp|ws)://[a-z0-9.:@\\[\\]%-]{0,30}(/[ -~]{0,20})?",
            "http://(127\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}|localhost|\\[::1\\]|10\\.0\\.0\\.1|example\\.com)(:[0-9]{1,6})?/",
        ],
    ) {
        let as_token = std::panic::catch_unwind(|| base().token_url(url.as_str()).build());
        prop_assert!(as_token.is_ok(), "panicked on {:?}", url);
        let as_origin = std::panic::catch_unwind(|| {
            base()
                .token_url("https://api.daxium-air.com/oauth/v2/token")
                .api_origin(url.as_str())
                .build()
        });
        prop_assert!(as_origin.is_ok(), "panicked on {:?}", url);
        for built in [as_token.unwrap(), as_origin.unwrap()] {
            if built.is_ok() {
                let lower = url.to_ascii_lowercase();
                let host = lower
                    .strip_prefix("http://")
                    .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
                match host {
                    None => prop_assert!(lower.starts_with("https://"), "{:?}", url),
                    Some(authority) => {
                        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                        prop_assert!(
                            host.starts_with("127.")
                                || host.starts_with("localhost")
                                || host.starts_with("[::1]"),
                            "http:// to {:?} accepted",
                            host
                        );
                    }
                }
            }
        }
    }
}

// === extreme settings at work ===

#[test]
fn a_zero_grant_timeout_is_refused_at_build_time() {
    let err = builder()
        .grant_timeout(Duration::ZERO)
        .fetcher(fetcher::from_fn(|_grant| async {
            Err::<TokenPair, _>(TokenError::timeout())
        }))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("grant_timeout"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn huge_settings_neither_panic_nor_hang() {
    let s = setup_with(|b| {
        b.wait_budget(Duration::MAX)
            .rejected_cooldown(Duration::MAX)
            .refresh_margin(Duration::MAX)
            .backoff(Duration::from_secs(1), Duration::MAX)
            .grant_timeout(Duration::MAX)
            .lease_ttl(Duration::MAX)
    });
    let svc = s.service();
    for _ in 0..6 {
        assert_eq!(
            in_time("request", send(&svc, get()))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_secs(1800)).await;
    }
    // A 3600 s token refreshed at about half its life.
    assert!(
        (3..=7).contains(&s.endpoint.grants()),
        "{}",
        s.endpoint.grants()
    );
    // A refused password holds for ever, until the credentials change.
    s.api.revoke_all();
    s.endpoint.push(Step::Reject);
    s.endpoint.push(Step::Reject);
    let err = in_time("refused", send(&svc, get())).await.unwrap_err();
    assert!(err.token_error().unwrap().is_grant_rejected(), "{err:?}");
    s.layer.set_credentials(Credentials::new(
        "client",
        "client-secret",
        "user@example.com",
        "new",
    ));
    assert_eq!(
        in_time("new password", send(&svc, get()))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn an_endless_backoff_fails_fast_instead_of_hanging() {
    let s = setup_with(|b| {
        b.backoff(Duration::MAX, Duration::MAX)
            .wait_budget(Duration::from_secs(5))
    });
    s.endpoint.push_n(10, Step::Fail);
    let svc = s.service();
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let err = in_time("request", send(&svc, get())).await.unwrap_err();
        assert!(err.token_error().unwrap().is_transient(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(s.endpoint.grants(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_refresh_margin_uses_a_token_to_its_expiry_and_not_past_it() {
    let s = setup_with(|b| b.refresh_margin(Duration::ZERO));
    *s.endpoint.lifetime.lock().unwrap() = Duration::from_secs(60);
    let svc = s.service();
    let start = tokio::time::Instant::now();
    send(&svc, get()).await.unwrap();
    tokio::time::sleep_until(start + Duration::from_millis(59_900)).await;
    send(&svc, get()).await.unwrap();
    // Just past the expiry (at the instant itself, the timer and the request
    // wake together).
    tokio::time::sleep_until(start + Duration::from_millis(60_001)).await;
    send(&svc, get()).await.unwrap();
    let seen = seen_tokens(&s);
    assert_eq!(
        seen,
        ["Bearer access-1", "Bearer access-1", "Bearer access-2"]
    );
}
