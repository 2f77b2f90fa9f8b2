//! Property tests of the two parsers that read what the token endpoint sends:
//! `parse_token_response` (a 2xx body) and `ErrorBody::parse` (an error body).
//! Neither panics on any input; valid responses parse to exactly what they
//! hold, under the documented lifetime and `error` rules; and no error quotes a
//! token.

use std::time::Duration;

use daxium_auth::{
    DEFAULT_LIFETIME, ErrorBody, MAX_LIFETIME, MAX_TOKEN_LEN, MIN_LIFETIME, parse_token_response,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

// === strategies ===

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        numeric_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings that look like numbers, and some that nearly do.
fn numeric_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[ ]{0,2}[-+]?[0-9]{1,30}(\\.[0-9]{0,5})?([eE][-+]?[0-9]{1,4})?[ ]{0,2}",
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
    ]
}

const TOKEN_KEYS: &[&str] = &[
    "access_token",
    "refresh_token",
    "expires_in",
    "token_type",
    "scope",
    "error",
];
const ERROR_KEYS: &[&str] = &[
    "code",
    "message",
    "url",
    "server_time",
    "error",
    "error_description",
    "error_uri",
    "infos",
    "api_version",
];

/// A key: a known one most of the time, else anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(TOKEN_KEYS).prop_map(str::to_owned),
        3 => prop::sample::select(ERROR_KEYS).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// An object with the known keys of both parsers, each holding a value of a
/// random type.
fn known_keys_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), any_json(), 0..12)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// An RFC 6750 `b64token`.
fn b64token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/-]{1,80}={0,2}"
}

/// A refresh token: printable, without control characters.
fn refresh_token() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{1,80}", "[a-zA-Z0-9é€漢]{1,20}", b64token(),]
}

/// `bearer` in any case, with surrounding blanks sometimes.
fn bearer() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(any::<bool>(), 6),
        0..3usize,
        0..3usize,
    )
        .prop_map(|(upper, before, after)| {
            let word: String = "bearer"
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            format!("{}{word}{}", " ".repeat(before), " ".repeat(after))
        })
}

/// An `expires_in` value, and the lifetime the rule gives it.
fn expires_in() -> impl Strategy<Value = (Option<Value>, Duration)> {
    fn rule(seconds: f64) -> Duration {
        if seconds.is_nan() || seconds.floor() <= 0.0 {
            DEFAULT_LIFETIME
        } else {
            let s = seconds.floor();
            if s >= MAX_LIFETIME.as_secs_f64() {
                MAX_LIFETIME
            } else {
                Duration::from_secs(s as u64).max(MIN_LIFETIME)
            }
        }
    }
    prop_oneof![
        // Missing or null.
        Just((None, DEFAULT_LIFETIME)),
        Just((Some(Value::Null), DEFAULT_LIFETIME)),
        // Whole seconds in range, as numbers and as strings.
        (1u64..=86_400).prop_map(|s| (Some(json!(s)), Duration::from_secs(s))),
        (1u64..=86_400).prop_map(|s| (Some(json!(s.to_string())), Duration::from_secs(s))),
        (1u64..=86_400).prop_map(|s| (Some(json!(format!(" {s} "))), Duration::from_secs(s))),
        // Beyond the maximum: the maximum.
        (86_401u64..).prop_map(|s| (Some(json!(s)), MAX_LIFETIME)),
        // Zero and negative: the default.
        (i64::MIN..=0).prop_map(|s| (Some(json!(s)), DEFAULT_LIFETIME)),
        (i64::MIN..=0).prop_map(|s| (Some(json!(s.to_string())), DEFAULT_LIFETIME)),
        // Fractions: floored, then the same rule.
        (-10.0f64..200_000.0).prop_map(|s| (Some(json!(s)), rule(s))),
        // Not numbers: the default.
        prop_oneof![
            Just(json!(true)),
            Just(json!([])),
            Just(json!({})),
            "[a-z]{1,8}".prop_map(Value::String),
            Just(json!("")),
        ]
        .prop_map(|v| (Some(v), DEFAULT_LIFETIME)),
    ]
}

/// What a valid token response holds.
#[derive(Debug, Clone)]
struct Valid {
    access: String,
    refresh: Option<String>,
    expires_in: Option<Value>,
    lifetime: Duration,
    token_type: Option<String>,
    scope: Option<String>,
    extra: Vec<(String, Value)>,
}

fn valid_response() -> impl Strategy<Value = Valid> {
    (
        b64token(),
        prop::option::of(refresh_token()),
        expires_in(),
        prop::option::of(bearer()),
        prop::option::of("[ -~]{0,20}"),
        prop::collection::vec(("x_[a-z]{1,8}", any_json()), 0..4),
    )
        .prop_map(
            |(access, refresh, (expires_in, lifetime), token_type, scope, extra)| Valid {
                access,
                refresh,
                expires_in,
                lifetime,
                token_type,
                scope,
                extra,
            },
        )
}

impl Valid {
    fn to_json(&self) -> Vec<u8> {
        let mut map = Map::new();
        map.insert("access_token".into(), json!(self.access));
        if let Some(refresh) = &self.refresh {
            map.insert("refresh_token".into(), json!(refresh));
        }
        if let Some(expires_in) = &self.expires_in {
            map.insert("expires_in".into(), expires_in.clone());
        }
        if let Some(token_type) = &self.token_type {
            map.insert("token_type".into(), json!(token_type));
        }
        if let Some(scope) = &self.scope {
            map.insert("scope".into(), json!(scope));
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        serde_json::to_vec(&Value::Object(map)).unwrap()
    }
}

/// The RFC 6749 codes that refuse the grant itself.
const REFUSALS: [&str; 7] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
];

/// An `error` member that states no error: anything but a non-empty string.
fn no_stated_error() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ \t]{0,3}".prop_map(Value::String),
        prop::collection::vec(any::<u8>().prop_map(Value::from), 0..3).prop_map(Value::Array),
        Just(json!({"error": "invalid_grant"})),
    ]
}

/// Marks the values that are secrets, so a test can look for them in output.
const MARK: &str = "SEKRETmark";

/// A token-shaped object whose secret fields hold marked strings, some valid
/// tokens and some not (a space, a control character, too long).
fn marked_object() -> impl Strategy<Value = Value> {
    let secret = prop_oneof![
        "[A-Za-z0-9]{0,10}".prop_map(|s| format!("{MARK}{s}")),
        "[A-Za-z0-9]{0,10}".prop_map(|s| format!("{MARK} {s}")),
        "[A-Za-z0-9]{0,10}".prop_map(|s| format!("{MARK}\r\n{s}")),
        "[A-Za-z0-9]{0,10}".prop_map(|s| format!("\"{MARK}{s}é")),
        Just(format!("{MARK}{}", "a".repeat(MAX_TOKEN_LEN))),
    ];
    let other = prop_oneof![any_json(), secret.clone().prop_map(Value::String)];
    (
        prop::option::of(secret.clone()),
        prop::option::of(secret),
        prop::option::of(other.clone()),
        prop::option::of(other.clone()),
        prop::option::of(other),
    )
        .prop_map(|(access, refresh, expires_in, token_type, unknown)| {
            let mut map = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    map.insert(k.to_owned(), v);
                }
            };
            put("access_token", access.map(Value::String));
            put("refresh_token", refresh.map(Value::String));
            put("expires_in", expires_in);
            put("token_type", token_type);
            put("x_unknown", unknown);
            Value::Object(map)
        })
}

// === properties ===

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_token_response(&bytes);
        let _ = ErrorBody::parse(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_json(value in any_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Err(err) = parse_token_response(&bytes) {
            // Formatting the error never panics either.
            let _ = format!("{err} {err:?} {err:#?}");
        }
        if let Some(body) = ErrorBody::parse(&bytes) {
            let _ = format!("{body} {body:?}");
        }
    }

    #[test]
    fn parsers_never_panic_on_objects_with_known_keys(value in known_keys_object()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match parse_token_response(&bytes) {
            Ok(pair) => {
                // What parses has a lifetime inside the bounds and a usable header.
                prop_assert!(pair.lifetime() >= MIN_LIFETIME && pair.lifetime() <= MAX_LIFETIME);
                prop_assert!(pair.access_token().header_value().is_sensitive());
                let _ = format!("{pair:?}");
            }
            Err(err) => {
                let _ = format!("{err} {err:?}");
            }
        }
        if let Some(body) = ErrorBody::parse(&bytes) {
            prop_assert!(body.code().is_some());
            let _ = format!("{body} {body:?}");
        }
    }

    #[test]
    fn truncated_valid_responses_are_errors_not_panics(valid in valid_response(), cut in any::<prop::sample::Index>()) {
        let bytes = valid.to_json();
        let end = cut.index(bytes.len());
        let result = parse_token_response(&bytes[..end]);
        prop_assert!(result.is_err(), "a strict prefix of a JSON object is not JSON");
        let err = result.unwrap_err();
        prop_assert!(err.is_invalid_response());
        prop_assert!(err.is_transient());
    }

    #[test]
    fn valid_responses_parse_to_what_they_hold(valid in valid_response()) {
        let pair = parse_token_response(&valid.to_json())
            .map_err(|e| TestCaseError::fail(format!("{e}: {valid:?}")))?;
        prop_assert_eq!(pair.access_token().expose_secret(), valid.access.as_str());
        let header = format!("Bearer {}", valid.access);
        prop_assert_eq!(pair.access_token().header_value().as_bytes(), header.as_bytes());
        prop_assert!(pair.access_token().header_value().is_sensitive());
        prop_assert_eq!(
            pair.refresh_token().map(|r| r.expose_secret().to_owned()),
            valid.refresh.clone()
        );
        prop_assert_eq!(pair.lifetime(), valid.lifetime, "expires_in {:?}", valid.expires_in);
        prop_assert_eq!(pair.scope(), valid.scope.as_deref());
        // Debug never shows a token.
        prop_assert_eq!(format!("{:?}", pair.access_token()), "AccessToken(****)");
        if let Some(refresh) = pair.refresh_token() {
            prop_assert_eq!(format!("{refresh:?}"), "RefreshToken(****)");
        }
    }

    #[test]
    fn an_error_member_that_is_not_a_non_empty_string_is_ignored(
        valid in valid_response(),
        error in no_stated_error(),
    ) {
        let mut value: Value = serde_json::from_slice(&valid.to_json()).unwrap();
        value["error"] = error.clone();
        let pair = parse_token_response(&serde_json::to_vec(&value).unwrap())
            .map_err(|e| TestCaseError::fail(format!("{e}: error {error}")))?;
        prop_assert_eq!(pair.access_token().expose_secret(), valid.access.as_str());
        prop_assert_eq!(
            pair.refresh_token().map(|r| r.expose_secret().to_owned()),
            valid.refresh.clone()
        );
        prop_assert_eq!(pair.lifetime(), valid.lifetime);
    }

    #[test]
    fn a_non_empty_error_string_is_always_an_error(
        valid in valid_response(),
        code in prop_oneof![
            "[a-z_]{1,24}",
            prop::sample::select(&REFUSALS[..]).prop_map(str::to_owned),
        ],
    ) {
        let mut value: Value = serde_json::from_slice(&valid.to_json()).unwrap();
        value["error"] = json!(code);
        let err = parse_token_response(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        let refusal = REFUSALS.contains(&code.as_str());
        prop_assert_eq!(err.is_grant_rejected(), refusal, "{}", code);
        prop_assert_eq!(err.is_invalid_response(), !refusal, "{}", code);
        prop_assert_eq!(err.error_code(), Some(code.as_str()));
    }

    #[test]
    fn the_lifetime_rule_holds_for_any_number(seconds in any::<f64>()) {
        let body = json!({"access_token": "abc", "expires_in": seconds});
        let Ok(bytes) = serde_json::to_vec(&body) else { return Ok(()) };
        let lifetime = parse_token_response(&bytes).unwrap().lifetime();
        let expected = if seconds.is_finite() && seconds.floor() > 0.0 {
            Duration::from_secs_f64(seconds.floor().min(MAX_LIFETIME.as_secs_f64()))
                .max(MIN_LIFETIME)
        } else {
            DEFAULT_LIFETIME
        };
        prop_assert_eq!(lifetime, expected);
    }

    #[test]
    fn the_lifetime_rule_holds_for_numeric_strings(text in numeric_string()) {
        let body = json!({"access_token": "abc", "expires_in": text});
        let lifetime = parse_token_response(&serde_json::to_vec(&body).unwrap())
            .unwrap()
            .lifetime();
        let expected = match text.trim().parse::<f64>() {
            Ok(s) if !s.is_nan() && s.floor() > 0.0 => {
                Duration::from_secs_f64(s.floor().min(MAX_LIFETIME.as_secs_f64())).max(MIN_LIFETIME)
            }
            _ => DEFAULT_LIFETIME,
        };
        prop_assert_eq!(lifetime, expected, "{:?}", text);
    }

    #[test]
    fn token_type_other_than_bearer_is_refused(t in "[a-zA-Z]{1,10}") {
        prop_assume!(!t.eq_ignore_ascii_case("bearer"));
        let body = json!({"access_token": "abc", "token_type": t});
        let err = parse_token_response(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        prop_assert!(err.is_invalid_response());
        prop_assert!(err.to_string().contains("`token_type`"));
    }

    #[test]
    fn errors_never_quote_a_secret(value in marked_object()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match parse_token_response(&bytes) {
            Err(err) => {
                let text = format!("{err} {err:?} {err:#?}");
                prop_assert!(!text.contains(MARK), "{}", text);
            }
            Ok(pair) => {
                let text = format!("{pair:?} {pair:#?}");
                prop_assert!(!text.contains(MARK), "{}", text);
            }
        }
    }

    #[test]
    fn error_bodies_parse_to_what_they_hold(
        code in prop::option::of("DAERR-[0-9]{3,4}"),
        message in prop::option::of("[ -~]{0,300}"),
        server_time in prop::option::of(0u64..2_000_000_000),
        error in prop::option::of(prop::sample::select(&["invalid_grant", "invalid_client", "temporarily_unavailable", "server_error"][..])),
        description in prop::option::of("[ -~é]{0,300}"),
        extra in prop::collection::vec(("x_[a-z]{1,6}", any_json()), 0..3),
    ) {
        let mut map = Map::new();
        if let Some(code) = &code { map.insert("code".into(), json!(code)); }
        if let Some(message) = &message { map.insert("message".into(), json!(message)); }
        // Daxium sends server_time as a string; a number is accepted too.
        if let Some(t) = server_time {
            let v = if t % 2 == 0 { json!(t.to_string()) } else { json!(t) };
            map.insert("server_time".into(), v);
        }
        if let Some(error) = error { map.insert("error".into(), json!(error)); }
        if let Some(d) = &description { map.insert("error_description".into(), json!(d)); }
        map.insert("infos".into(), json!([]));
        for (k, v) in extra { map.insert(k, v); }
        let parsed = ErrorBody::parse(&serde_json::to_vec(&Value::Object(map)).unwrap());

        if code.is_none() && error.is_none() {
            prop_assert!(parsed.is_none());
            return Ok(());
        }
        let parsed = parsed.expect("a body with a code parses");
        // Texts are trimmed, and cut to 256 bytes (plus an ellipsis).
        let expect = |s: &str| {
            let s = s.trim();
            if s.len() <= 256 {
                s.to_owned()
            } else {
                let mut end = 256;
                while !s.is_char_boundary(end) { end -= 1; }
                format!("{}…", &s[..end])
            }
        };
        prop_assert_eq!(parsed.code.clone(), code.clone());
        prop_assert_eq!(parsed.error.clone(), error.map(str::to_owned));
        prop_assert_eq!(parsed.message.clone(), message.as_deref().map(expect));
        prop_assert_eq!(parsed.error_description.clone(), description.as_deref().map(expect));
        prop_assert_eq!(parsed.server_time.clone(), server_time.map(|t| t.to_string()));
        prop_assert_eq!(parsed.code(), code.as_deref().or(error));
    }
}

#[test]
fn boundary_lifetimes() {
    let lifetime = |v: Value| {
        parse_token_response(
            &serde_json::to_vec(&json!({"access_token": "abc", "expires_in": v})).unwrap(),
        )
        .unwrap()
        .lifetime()
    };
    assert_eq!(lifetime(json!(0.99)), DEFAULT_LIFETIME);
    assert_eq!(lifetime(json!(1)), MIN_LIFETIME);
    assert_eq!(lifetime(json!(1.5)), MIN_LIFETIME);
    assert_eq!(lifetime(json!(86_400)), MAX_LIFETIME);
    assert_eq!(lifetime(json!(86_401)), MAX_LIFETIME);
    assert_eq!(lifetime(json!(u64::MAX)), MAX_LIFETIME);
    assert_eq!(lifetime(json!(i64::MIN)), DEFAULT_LIFETIME);
    assert_eq!(lifetime(json!("1e400")), MAX_LIFETIME);
    assert_eq!(lifetime(json!("-1e400")), DEFAULT_LIFETIME);
    assert_eq!(lifetime(json!("NaN")), DEFAULT_LIFETIME);
    assert_eq!(lifetime(json!("inf")), MAX_LIFETIME);
}
