//! The parsers of the endpoint's answer, case by case: the lifetime rule, the
//! checks a token must pass, the `error` member of a 2xx, the two error body
//! forms, and a property that a rotated refresh token is never lost.

use super::*;
use crate::token::MAX_TOKEN_LEN;

fn parse(json: &str) -> Result<TokenPair, TokenError> {
    parse_token_response(json.as_bytes())
}

fn lifetime_of(expires_in: &str) -> Duration {
    let json =
        format!(r#"{{"access_token":"abc","token_type":"bearer","expires_in":{expires_in}}}"#);
    parse(&json).unwrap().lifetime()
}

#[test]
fn full_daxium_response() {
    let pair = parse(
        r#"{"access_token":"acc.123-_~+/=","refresh_token":"ref-1","expires_in":3600,"token_type":"bearer","scope":"all"}"#,
    )
    .unwrap();
    assert_eq!(pair.access_token().expose_secret(), "acc.123-_~+/=");
    assert_eq!(pair.access_token().header_value(), "Bearer acc.123-_~+/=");
    assert!(pair.access_token().header_value().is_sensitive());
    assert_eq!(pair.refresh_token().unwrap().expose_secret(), "ref-1");
    assert_eq!(pair.lifetime(), Duration::from_secs(3600));
    assert_eq!(pair.scope(), Some("all"));
}

#[test]
fn expires_in_as_numeric_string() {
    assert_eq!(lifetime_of(r#""1800""#), Duration::from_secs(1800));
    assert_eq!(lifetime_of(r#"" 120 ""#), Duration::from_secs(120));
}

#[test]
fn expires_in_fraction_rounds_down() {
    assert_eq!(lifetime_of("90.9"), Duration::from_secs(90));
}

#[test]
fn expires_in_missing_is_the_default() {
    let pair = parse(r#"{"access_token":"abc","token_type":"bearer"}"#).unwrap();
    assert_eq!(pair.lifetime(), DEFAULT_LIFETIME);
}

#[test]
fn expires_in_null_is_the_default() {
    assert_eq!(lifetime_of("null"), DEFAULT_LIFETIME);
}

#[test]
fn expires_in_non_numeric_string_is_the_default() {
    assert_eq!(lifetime_of(r#""soon""#), DEFAULT_LIFETIME);
}

#[test]
fn expires_in_zero_is_the_default() {
    assert_eq!(lifetime_of("0"), DEFAULT_LIFETIME);
    assert_eq!(lifetime_of("0.5"), DEFAULT_LIFETIME);
}

#[test]
fn expires_in_negative_is_the_default() {
    assert_eq!(lifetime_of("-5"), DEFAULT_LIFETIME);
    assert_eq!(lifetime_of(r#""-99999999999999999999""#), DEFAULT_LIFETIME);
}

#[test]
fn expires_in_tiny_is_honoured_down_to_the_minimum() {
    assert_eq!(lifetime_of("1"), MIN_LIFETIME);
    assert_eq!(lifetime_of("2"), Duration::from_secs(2));
}

#[test]
fn expires_in_absurd_is_the_maximum() {
    assert_eq!(lifetime_of("99999999999999999999999"), MAX_LIFETIME);
    assert_eq!(lifetime_of("1e308"), MAX_LIFETIME);
    assert_eq!(lifetime_of(r#""1e400""#), MAX_LIFETIME);
    assert_eq!(lifetime_of(&u64::MAX.to_string()), MAX_LIFETIME);
}

fn refresh_lifetime_of(refresh_expires_in: &str) -> Option<Duration> {
    let json = format!(
        r#"{{"access_token":"abc","refresh_token":"r","refresh_expires_in":{refresh_expires_in}}}"#
    );
    parse(&json).unwrap().refresh_token_lifetime()
}

#[test]
fn refresh_expires_in_as_a_number_or_a_numeric_string() {
    assert_eq!(refresh_lifetime_of("1800"), Some(Duration::from_secs(1800)));
    assert_eq!(
        refresh_lifetime_of(r#"" 120 ""#),
        Some(Duration::from_secs(120))
    );
    assert_eq!(refresh_lifetime_of("90.9"), Some(Duration::from_secs(90)));
    assert_eq!(refresh_lifetime_of("1"), Some(MIN_LIFETIME));
}

#[test]
fn refresh_expires_in_missing_zero_negative_or_garbage_is_unknown() {
    let pair = parse(r#"{"access_token":"abc","refresh_token":"r"}"#).unwrap();
    assert_eq!(pair.refresh_token_lifetime(), None);
    for value in [
        "null",
        "0",
        "0.5",
        "-5",
        r#""soon""#,
        r#""NaN""#,
        "true",
        "[1]",
    ] {
        assert_eq!(refresh_lifetime_of(value), None, "{value}");
    }
}

#[test]
fn refresh_expires_in_absurd_is_the_refresh_maximum() {
    for value in ["99999999999999999999999", "1e308", r#""1e400""#] {
        assert_eq!(
            refresh_lifetime_of(value),
            Some(MAX_REFRESH_LIFETIME),
            "{value}"
        );
    }
    // Longer than any access token may live, and kept so.
    let week = Duration::from_secs(7 * 86_400);
    assert_eq!(refresh_lifetime_of("604800"), Some(week));
}

#[test]
fn token_type_is_case_insensitive() {
    for t in ["bearer", "Bearer", "BEARER", "bEaReR"] {
        let json = format!(r#"{{"access_token":"abc","token_type":"{t}"}}"#);
        assert!(parse(&json).is_ok(), "{t}");
    }
}

#[test]
fn token_type_other_than_bearer_is_refused() {
    let err = parse(r#"{"access_token":"abc","token_type":"mac"}"#).unwrap_err();
    assert!(err.is_invalid_response());
    assert!(err.to_string().contains("`token_type`"));
}

#[test]
fn access_token_with_crlf_is_refused_without_echo() {
    let err = parse(r#"{"access_token":"abc\r\nX-Evil: 1","token_type":"bearer"}"#).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("`access_token`"));
    assert!(!text.contains("Evil"));
}

#[test]
fn access_token_with_space_is_refused() {
    let err = parse(r#"{"access_token":"ab cd","token_type":"bearer"}"#).unwrap_err();
    assert!(
        err.to_string()
            .contains("`access_token` not an RFC 6750 b64token")
    );
}

#[test]
fn access_token_non_ascii_is_refused() {
    let err = parse(r#"{"access_token":"jéton","token_type":"bearer"}"#).unwrap_err();
    assert!(err.is_invalid_response());
    assert!(!err.to_string().contains("jéton"));
}

#[test]
fn access_token_over_8_kib_is_refused() {
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let json = format!(r#"{{"access_token":"{long}","token_type":"bearer"}}"#);
    let err = parse(&json).unwrap_err();
    assert!(err.to_string().contains("longer than 8 KiB"));
    let just = "a".repeat(MAX_TOKEN_LEN);
    let json = format!(r#"{{"access_token":"{just}","token_type":"bearer"}}"#);
    assert!(parse(&json).is_ok());
}

#[test]
fn access_token_missing_or_empty_is_refused() {
    assert!(
        parse(r#"{"token_type":"bearer"}"#)
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    assert!(
        parse(r#"{"access_token":""}"#)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    assert!(parse(r#"{"access_token":"=="}"#).is_err());
    assert!(
        parse(r#"{"access_token":42}"#)
            .unwrap_err()
            .to_string()
            .contains("not a string")
    );
}

#[test]
fn refresh_token_absent_keeps_none() {
    let pair = parse(r#"{"access_token":"abc","token_type":"bearer","expires_in":60}"#).unwrap();
    assert!(pair.refresh_token().is_none());
}

#[test]
fn unknown_fields_are_ignored() {
    let pair = parse(
        r#"{"access_token":"abc","token_type":"bearer","id_token":{"x":[1,2]},"extra":null}"#,
    )
    .unwrap();
    assert_eq!(pair.access_token().expose_secret(), "abc");
}

#[test]
fn an_error_that_is_not_a_non_empty_string_states_nothing() {
    for error in ["false", "null", r#""""#, r#"" ""#, "0", "[]", "{}"] {
        let json = format!(
            r#"{{"access_token":"abc","refresh_token":"r2","expires_in":60,"token_type":"bearer","error":{error}}}"#
        );
        let pair = parse(&json).unwrap_or_else(|e| panic!("error {error}: {e}"));
        assert_eq!(pair.refresh_token().unwrap().expose_secret(), "r2");
        assert_eq!(pair.lifetime(), Duration::from_secs(60));
    }
}

#[test]
fn a_stated_error_keeps_the_rotated_refresh_token() {
    let err =
        parse(r#"{"access_token":"abc","refresh_token":"r2","error":"server_error"}"#).unwrap_err();
    assert!(err.is_invalid_response() && err.is_transient());
    assert_eq!(err.error_code(), Some("server_error"));
    assert!(!format!("{err:?} {err}").contains("r2"));
    assert_eq!(
        err.clone().split_refresh_token().1.unwrap().expose_secret(),
        "r2"
    );

    let err = parse(r#"{"refresh_token":"r3","error":"invalid_grant"}"#).unwrap_err();
    assert!(err.is_grant_rejected());
    assert_eq!(
        err.clone().split_refresh_token().1.unwrap().expose_secret(),
        "r3"
    );

    let err = parse(r#"{"error":"invalid_grant","error_description":"spent"}"#).unwrap_err();
    assert!(err.is_grant_rejected());
    assert_eq!(err.error_code(), Some("invalid_grant"));
    assert!(err.clone().split_refresh_token().1.is_none());
}

#[test]
fn malformed_json_never_echoes_the_body() {
    let err = parse(r#"{"access_token": "sentinel-secret-tok"#).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(err.is_invalid_response());
    assert!(text.contains("malformed JSON"));
    assert!(!text.contains("sentinel"));
    let err = parse(r#"{"access_token": ["sentinel-secret-tok"], "expires_in": "x"}"#).unwrap_err();
    assert!(!format!("{err} {err:?}").contains("sentinel"));
}

#[test]
fn a_rotated_refresh_token_survives_an_unusable_answer() {
    let err = parse(r#"{"access_token":"bad token","refresh_token":"r2"}"#).unwrap_err();
    assert!(!format!("{err:?} {err}").contains("r2"));
    // A clone handed out before keeps its own copy; splitting never panics.
    let shared = err.clone();
    let (err, rotated) = err.split_refresh_token();
    assert_eq!(rotated.unwrap().expose_secret(), "r2");
    assert!(err.is_invalid_response());
    assert_eq!(
        shared.split_refresh_token().1.unwrap().expose_secret(),
        "r2"
    );
    let err =
        parse(r#"{"access_token":"ok","token_type":"mac","refresh_token":"r3"}"#).unwrap_err();
    assert_eq!(
        err.clone().split_refresh_token().1.unwrap().expose_secret(),
        "r3"
    );
    let err = parse(r#"{"token_type":"bearer"}"#).unwrap_err();
    assert!(err.clone().split_refresh_token().1.is_none());
}

#[test]
fn parses_daxium_error_body() {
    let body = br#"{"code":"DAERR-0401","message":"Invalid credentials","url":"https://x/e","api_version":"v1.3","infos":[],"server_time":"1700000000"}"#;
    let parsed = ErrorBody::parse(body).unwrap();
    assert_eq!(parsed.code(), Some("DAERR-0401"));
    assert_eq!(parsed.description(), Some("Invalid credentials"));
    assert_eq!(parsed.server_time.as_deref(), Some("1700000000"));
    assert!(parsed.is_refusal());
}

#[test]
fn parses_rfc6749_error_body() {
    let body = br#"{"error":"invalid_grant","error_description":"expired"}"#;
    let parsed = ErrorBody::parse(body).unwrap();
    assert_eq!(parsed.code(), Some("invalid_grant"));
    assert_eq!(parsed.description(), Some("expired"));
    assert!(parsed.is_refusal());
    let other = ErrorBody::parse(br#"{"error":"temporarily_unavailable"}"#).unwrap();
    assert!(!other.is_refusal());
}

#[test]
fn error_body_refuses_other_shapes() {
    assert_eq!(ErrorBody::parse(b"<html>"), None);
    assert_eq!(ErrorBody::parse(br#"{"message":"no code"}"#), None);
    assert_eq!(ErrorBody::parse(b"[]"), None);
    assert_eq!(ErrorBody::parse(b""), None);
    // A gateway's own JSON, and codes that are no codes.
    assert_eq!(
        ErrorBody::parse(br#"{"code":400,"message":"Bad Request"}"#),
        None
    );
    assert_eq!(ErrorBody::parse(br#"{"error":false,"code":""}"#), None);
    assert_eq!(ErrorBody::parse(br#"{"error":" ","code":null}"#), None);
}

#[test]
fn only_daxium_codes_and_rfc6749_refusals_refuse() {
    let refuses = |json: &str| ErrorBody::parse(json.as_bytes()).unwrap().is_refusal();
    assert!(refuses(r#"{"code":"DAERR-0111"}"#));
    assert!(refuses(r#"{"error":"invalid_client"}"#));
    assert!(refuses(r#"{"code":"E42","error":"invalid_grant"}"#));
    assert!(!refuses(r#"{"code":"E42","message":"gateway"}"#));
    assert!(!refuses(r#"{"code":"daerr-0111"}"#));
    assert!(!refuses(r#"{"error":"temporarily_unavailable"}"#));
    assert!(!refuses(r#"{"error":"slow_down","code":401}"#));
}

#[test]
fn long_texts_are_cut_on_a_char_boundary() {
    let long = "é".repeat(300);
    let json = format!(r#"{{"error":"x","error_description":"{long}"}}"#);
    let parsed = ErrorBody::parse(json.as_bytes()).unwrap();
    let desc = parsed.error_description.unwrap();
    assert!(desc.len() <= TEXT_CAP + '…'.len_utf8());
    assert!(desc.ends_with('…'));
}

/// Any 2xx object that holds a valid `refresh_token`, whatever else it
/// holds: the token is in the pair, or in the error.
#[test]
fn a_rotated_refresh_token_is_never_lost() {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    let value = || {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            prop::sample::select(vec![
                "",
                " ",
                "abc",
                "bad token",
                "bearer",
                "mac",
                "invalid_grant",
                "server_error",
            ])
            .prop_map(|s| Value::String(s.to_owned())),
        ]
    };
    const KEYS: &[&str] = &["access_token", "token_type", "expires_in", "scope", "error"];
    let fields = prop::collection::vec((prop::sample::select(KEYS), value()), 0..6);
    proptest!(|(refresh in "[ -~]{1,40}", fields in fields)| {
        let mut object: serde_json::Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        object.insert("refresh_token".into(), json!(refresh));
        let body = serde_json::to_vec(&Value::Object(object)).unwrap();
        let kept = match parse_token_response(&body) {
            Ok(pair) => pair.refresh_token().map(|r| r.expose_secret().to_owned()),
            Err(err) => err.clone().split_refresh_token().1.map(|r| r.expose_secret().to_owned()),
        };
        prop_assert_eq!(kept.as_deref(), Some(refresh.as_str()));
    });
}
