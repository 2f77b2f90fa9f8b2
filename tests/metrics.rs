//! The `metrics` feature through the public API: a scripted run (three
//! callers on a cold start who wait for one password grant, a 401 and its
//! resend after a refresh, a refused refresh that falls back to the password
//! grant, and a 401 that is not replayed) recorded by `metrics-util`'s
//! debugging recorder, whose snapshot must hold the documented names, labels
//! and values, the same counts as `AuthLayer::stats`, and no secret. The
//! grant latency histogram itself is tested beside the counters, in
//! `src/stats.rs`.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;

use daxium_auth::{Credentials, NoReplay, Stats};
use futures_util::future::join_all;
use http::StatusCode;
use metrics::Unit;
use metrics_util::{
    MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use tower::ServiceExt;

use crate::support;

use support::scripted::{Step, get, send, setup_with};

const CLIENT_SECRET: &str = "SENTINEL-client-secret";
const PASSWORD: &str = "SENTINEL-password";

/// A series: its name and its labels.
type Series = (String, BTreeMap<String, String>);

/// What the recorder holds, by kind and series.
#[derive(Debug, Default)]
struct Recorded {
    counters: BTreeMap<Series, u64>,
    histograms: BTreeMap<Series, Vec<f64>>,
    units: BTreeMap<String, Option<Unit>>,
    descriptions: BTreeMap<String, Option<String>>,
}

/// The scripted run, under paused time, with `recorder` as the recorder in
/// place: the layer's stats at the end, and the secrets of the run (its
/// client secret, its password and every token issued, all marked
/// `SENTINEL`).
fn scripted_run(recorder: &DebuggingRecorder) -> (Stats, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || {
        runtime.block_on(async {
            let s = setup_with(|b| {
                b.credentials(Credentials::new(
                    "client",
                    CLIENT_SECRET,
                    "user@example.com",
                    PASSWORD,
                ))
            });
            *s.endpoint.prefix.lock().unwrap() = "SENTINEL-".to_owned();
            let svc = s.service();
            // Three callers on a cold start wait for one password grant.
            let first = (0..3).map(|_| svc.clone().oneshot(get()));
            for res in join_all(first).await {
                assert_eq!(res.unwrap().status(), StatusCode::OK);
            }
            // A 401 of a token that had worked: one refresh grant, one
            // resend.
            s.api.revoke_all();
            assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
            // A 401 whose refresh is refused: the password grant, one
            // resend.
            s.api.revoke_all();
            s.endpoint.push(Step::Reject);
            assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
            // A 401 not replayed.
            s.api.revoke_all();
            let mut once = get();
            once.extensions_mut().insert(NoReplay);
            let res = send(&svc, once).await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
            // The refusal still refreshes the token for the next request.
            assert_eq!(send(&svc, get()).await.unwrap().status(), StatusCode::OK);
            let mut secrets = s.endpoint.issued_tokens();
            secrets.extend([
                CLIENT_SECRET.to_owned(),
                PASSWORD.to_owned(),
                "SENTINEL".to_owned(),
            ]);
            (s.layer.stats(), secrets)
        })
    })
}

fn recorded(recorder: &DebuggingRecorder) -> Recorded {
    let mut recorded = Recorded::default();
    for (key, unit, description, value) in recorder.snapshotter().snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let labels = key
            .key()
            .labels()
            .map(|label| (label.key().to_owned(), label.value().to_owned()))
            .collect();
        recorded.units.insert(name.clone(), unit);
        recorded
            .descriptions
            .insert(name.clone(), description.map(|d| d.to_string()));
        match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => {
                recorded.counters.insert((name, labels), n);
            }
            (MetricKind::Histogram, DebugValue::Histogram(samples)) => {
                let samples = samples.into_iter().map(|x| x.into_inner()).collect();
                recorded.histograms.insert((name, labels), samples);
            }
            (kind, value) => panic!("no {kind:?} is exported: {name} = {value:?}"),
        }
    }
    recorded
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    (name.to_owned(), labels)
}

fn grants(grant_type: &str, outcome: &str) -> Series {
    series(
        "daxium_auth_grants_total",
        &[("grant_type", grant_type), ("outcome", outcome)],
    )
}

#[test]
fn the_counters_reach_the_recorder_with_their_names_and_labels() {
    let recorder = DebuggingRecorder::new();
    let (stats, _) = scripted_run(&recorder);
    let recorded = recorded(&recorder);
    let expected = BTreeMap::from([
        (grants("password", "ok"), 2),
        (grants("refresh_token", "ok"), 2),
        (grants("refresh_token", "rejected"), 1),
        (series("daxium_auth_resends_total", &[]), 2),
        (series("daxium_auth_replays_skipped_total", &[]), 1),
        // The three callers of the cold start, and the request after the
        // refusal that was not replayed, whose token was dropped.
        (series("daxium_auth_waited_total", &[]), 4),
    ]);
    assert_eq!(recorded.counters, expected, "{recorded:#?}");

    // The same counts as the layer's own snapshot.
    let counter = |series: Series| recorded.counters.get(&series).copied().unwrap_or(0);
    for (grant_type, outcome, count) in [
        ("password", "ok", stats.password_ok),
        ("password", "rejected", stats.password_rejected),
        ("password", "failed", stats.password_failed),
        ("refresh_token", "ok", stats.refresh_ok),
        ("refresh_token", "rejected", stats.refresh_rejected),
        ("refresh_token", "failed", stats.refresh_failed),
    ] {
        assert_eq!(
            counter(grants(grant_type, outcome)),
            count,
            "{grant_type} {outcome}"
        );
    }
    for (name, count) in [
        ("daxium_auth_replays_total", stats.replays),
        ("daxium_auth_resends_total", stats.resends),
        ("daxium_auth_replays_skipped_total", stats.replays_skipped),
        ("daxium_auth_waited_total", stats.waited),
    ] {
        assert_eq!(counter(series(name, &[])), count, "{name}");
    }

    // Each metric is described, with its unit.
    for (name, unit) in &recorded.units {
        let wanted = if name == "daxium_auth_grant_duration_seconds" {
            Unit::Seconds
        } else {
            Unit::Count
        };
        assert_eq!(*unit, Some(wanted), "{name}");
        let description = recorded.descriptions[name].as_deref().unwrap_or("");
        assert!(!description.is_empty(), "{name} has no description");
    }

    // The grant latencies, where the grant task records them: one sample per
    // grant, in seconds, under the labels of its counter.
    for ((name, labels), samples) in &recorded.histograms {
        assert_eq!(name, "daxium_auth_grant_duration_seconds");
        let grants = counter(("daxium_auth_grants_total".to_owned(), labels.clone()));
        assert_eq!(samples.len() as u64, grants, "{labels:?}");
        // The scripted endpoint answers after 20 ms of paused time.
        for sample in samples {
            assert!((0.02..1.0).contains(sample), "{labels:?}: {sample}");
        }
    }
}

#[test]
fn names_and_labels_are_the_documented_ones_and_hold_no_secret() {
    let recorder = DebuggingRecorder::new();
    let (_, secrets) = scripted_run(&recorder);
    let recorded = recorded(&recorder);
    assert!(secrets.len() > 2, "tokens were issued");
    let names = [
        "daxium_auth_grants_total",
        "daxium_auth_grant_duration_seconds",
        "daxium_auth_replays_total",
        "daxium_auth_resends_total",
        "daxium_auth_replays_skipped_total",
        "daxium_auth_waited_total",
        "daxium_auth_store_errors_total",
    ];
    let all = recorded.counters.keys().chain(recorded.histograms.keys());
    for (name, labels) in all {
        assert!(names.contains(&name.as_str()), "{name} is not documented");
        let grant_labels = name.starts_with("daxium_auth_grant");
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        if grant_labels {
            assert_eq!(keys, ["grant_type", "outcome"], "{name}");
            assert!(["password", "refresh_token"].contains(&labels["grant_type"].as_str()));
            assert!(["ok", "rejected", "failed"].contains(&labels["outcome"].as_str()));
        } else {
            assert!(keys.is_empty(), "{name}: {labels:?}");
        }
        let text = format!("{name} {labels:?} {:?}", recorded.descriptions[name]);
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret} in {text}");
        }
    }
}
