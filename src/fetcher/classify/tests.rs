//! The classification of answers, row by row: one table of every (status,
//! body) pair the fetcher tells apart with the predicates each one must give,
//! and the parts (`Retry-After`, body descriptions, service errors) on their own.

use super::*;

fn answered(status: u16, headers: &[(&str, &str)], body: &str) -> TokenError {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let status = StatusCode::from_u16(status).unwrap();
    let body = Ok(Bytes::copy_from_slice(body.as_bytes()));
    answer(status, &map, body, SystemTime::now()).unwrap_err()
}

#[test]
fn unparseable_error_body_is_described_not_quoted() {
    let err = answered(
        502,
        &[("content-type", "text/html")],
        "<html>proxy-sentinel-page</html>",
    );
    let text = format!("{err} {err:?}");
    assert!(text.contains("body: text/html, 32 bytes"), "{text}");
    assert!(!text.contains("proxy-sentinel-page"));
}

#[test]
fn success_body_is_never_copied_into_an_error() {
    let err = answered(
        200,
        &[("content-type", "application/json")],
        r#"{"access_token":"acc sentinel","refresh_token":"ref-1"}"#,
    );
    assert!(err.is_invalid_response());
    assert_eq!(err.status(), Some(StatusCode::OK));
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("sentinel") && !text.contains("ref-1"),
        "{text}"
    );

    let err = answered(
        200,
        &[("content-type", "text/html")],
        "<html>sentinel</html>",
    );
    assert!(err.is_invalid_response() && err.is_transient());
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("malformed JSON") && text.contains("body: text/html, 21 bytes"),
        "{text}"
    );
    assert!(!text.contains("sentinel"), "{text}");
}

/// What the crate makes of an answer, as the predicates say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Means {
    /// A token pair.
    Token,
    /// Refused: rejected, not transient.
    Refused,
    /// 5xx, 429, 408: transient.
    Unavailable,
    /// Neither rejected nor transient.
    Unexpected,
    /// A 3xx: neither rejected nor transient.
    Redirect,
    /// A 2xx that cannot be used: transient.
    Unusable,
    /// A body over the cap: transient.
    TooLarge,
    /// The body broke off: transient.
    Broken,
}

const TOKEN: &str = r#"{"access_token":"acc-1","refresh_token":"r2","expires_in":60}"#;
const NO_ERROR: &str = r#"{"access_token":"a","error":false}"#;
const BAD_TOKEN: &str = r#"{"access_token":"bad token"}"#;
const NOT_BEARER: &str = r#"{"access_token":"a","token_type":"mac"}"#;
const STATED_ERROR: &str = r#"{"access_token":"a","error":"server_error"}"#;
const RFC: &str = r#"{"error":"invalid_grant","error_description":"spent"}"#;
const RFC_LATER: &str = r#"{"error":"temporarily_unavailable"}"#;
const DAERR: &str = r#"{"code":"DAERR-0111","message":"invalid username or password","url":"https://docs.daxium-air.com/errors/DAERR-0111","api_version":"v1.3","infos":[],"server_time":"1700000000"}"#;
const GATEWAY: &str = r#"{"code":400,"message":"Bad Request"}"#;
const HTML: &str = "<html><body><h1>403 Forbidden</h1></body></html>";
/// 90 s after the `now` of the table's test.
const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// The body as read: its text, or how reading it failed.
#[derive(Debug, Clone, Copy)]
enum Read {
    Text(&'static str),
    TooLarge,
    Broken,
}

use Means::*;
use Read::{Broken as Cut, Text, TooLarge as Over};

/// One answer: status, `Retry-After`, body; what it means, and the wait in
/// seconds that the error carries.
type Row = (u16, Option<&'static str>, Read, Means, Option<u64>);

/// Every (status, body) the crate tells apart, with `Retry-After` where it
/// matters.
const TABLE: &[Row] = &[
    (200, None, Text(TOKEN), Token, None),
    (200, None, Text(NO_ERROR), Token, None),
    (200, None, Text(BAD_TOKEN), Unusable, None),
    (200, None, Text(NOT_BEARER), Unusable, None),
    (200, None, Text(HTML), Unusable, None),
    (200, None, Text(STATED_ERROR), Unusable, None),
    (200, Some("5"), Text(RFC), Refused, Some(5)),
    (200, None, Over, TooLarge, None),
    (200, None, Cut, Broken, None),
    (204, None, Text(""), Unusable, None),
    (301, None, Text(TOKEN), Redirect, None),
    (302, None, Text(""), Redirect, None),
    (307, Some("1"), Text(""), Redirect, Some(1)),
    (400, None, Text(RFC), Refused, None),
    (400, None, Text(DAERR), Refused, None),
    (400, None, Text(RFC_LATER), Unexpected, None),
    (400, None, Text(GATEWAY), Unexpected, None),
    (400, None, Text(HTML), Unexpected, None),
    (400, None, Text(""), Unexpected, None),
    (401, None, Text(RFC), Refused, None),
    (401, None, Text(DAERR), Refused, None),
    (401, None, Text(RFC_LATER), Unexpected, None),
    (401, None, Text(GATEWAY), Unexpected, None),
    (401, None, Text(HTML), Unexpected, None),
    (401, None, Text(""), Unexpected, None),
    (401, None, Over, Unexpected, None),
    (401, None, Cut, Unexpected, None),
    (403, None, Text(RFC), Refused, None),
    (403, None, Text(DAERR), Refused, None),
    (403, None, Text(GATEWAY), Unexpected, None),
    (403, None, Text(HTML), Unexpected, None),
    (403, None, Text(""), Unexpected, None),
    (404, None, Text(DAERR), Unexpected, None),
    (404, None, Text(HTML), Unexpected, None),
    (405, None, Text(""), Unexpected, None),
    (408, None, Text(""), Unavailable, None),
    (413, None, Text(DAERR), Unexpected, None),
    (422, None, Text(RFC), Unexpected, None),
    (429, Some("120"), Text(""), Unavailable, Some(120)),
    (429, Some(DATE), Text(""), Unavailable, Some(90)),
    (429, Some("soon"), Text(""), Unavailable, None),
    (500, None, Text(DAERR), Unavailable, None),
    (502, None, Text(HTML), Unavailable, None),
    (503, Some("7"), Text(RFC), Unavailable, Some(7)),
    (503, None, Cut, Unavailable, None),
    (504, None, Text(""), Unavailable, None),
];

#[test]
fn every_answer_the_crate_tells_apart() {
    // 90 s before the date in the table's HTTP-date row.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 90);
    for &(code, retry_after, read, means, wait) in TABLE {
        let row = format!("{code} {retry_after:?} {read:?}");
        let status = StatusCode::from_u16(code).unwrap();
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        }
        if matches!(read, Text(HTML)) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        }
        let body = match read {
            Text(text) => Ok(Bytes::from_static(text.as_bytes())),
            Over => Err(BodyFailure::TooLarge),
            Cut => Err(BodyFailure::Broken("cut".into())),
        };
        let err = match answer(status, &headers, body, now) {
            Ok(pair) => {
                assert_eq!(means, Token, "{row}: {pair:?}");
                continue;
            }
            Err(err) => err,
        };
        assert_ne!(means, Token, "{row}: {err:?}");
        let transient = matches!(means, Unavailable | Unusable | TooLarge | Broken);
        assert_eq!(err.is_grant_rejected(), means == Refused, "{row}: {err:?}");
        assert_eq!(err.is_transient(), transient, "{row}: {err:?}");
        assert_eq!(err.status(), Some(status), "{row}");
        assert_eq!(err.retry_after(), wait.map(Duration::from_secs), "{row}");
        assert!(err.may_have_been_sent(), "{row}");
        assert_eq!(err.is_redirect(), means == Redirect, "{row}");
        assert_eq!(err.is_invalid_response(), means == Unusable, "{row}");
        assert_eq!(err.is_body_too_large(), means == TooLarge, "{row}");
        assert!(!err.is_connect() && !err.is_timeout(), "{row}");
    }
}

#[test]
fn refusals_keep_their_code_and_describe_the_rest() {
    let err = answered(403, &[("content-type", "text/html")], HTML);
    assert_eq!(err.error_code(), None);
    let described = format!("body: text/html, {} bytes", HTML.len());
    assert!(err.to_string().contains(&described), "{err}");
    let err = answered(400, &[], GATEWAY);
    assert!(err.body().is_none(), "{err:?}");
    let err = answered(401, &[], DAERR);
    assert_eq!(err.error_code(), Some("DAERR-0111"));
    let err = answered(400, &[], RFC);
    assert_eq!(err.error_code(), Some("invalid_grant"));
}

#[test]
fn a_body_that_could_not_be_read_is_said_so() {
    let none = HeaderMap::new();
    let now = SystemTime::now();
    let too_large = answer(
        StatusCode::UNAUTHORIZED,
        &none,
        Err(BodyFailure::TooLarge),
        now,
    );
    assert!(too_large.unwrap_err().to_string().contains("1 MiB cap"));
    let broken = BodyFailure::Broken("cut-cause".into());
    let err = answer(StatusCode::UNAUTHORIZED, &none, Err(broken), now).unwrap_err();
    assert!(err.to_string().contains("body broke off"), "{err}");
    assert!(err.source().unwrap().to_string().contains("cut-cause"));
}

// --- was it sent ---

#[test]
fn service_errors_are_transport_errors() {
    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset-cause");
    let err = service_error(reset.into());
    assert!(err.is_transient() && err.may_have_been_sent() && !err.is_connect());
    assert_eq!(
        err.to_string(),
        "the exchange with the token endpoint broke"
    );
    assert!(err.source().unwrap().to_string().contains("reset-cause"));
}

#[test]
fn refused_without_a_connector_saying_so_counts_as_sent() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let err = service_error(refused.into());
    assert!(!err.is_connect() && err.may_have_been_sent());
}

// --- Retry-After ---

fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    parse_retry_after(&HeaderValue::from_str(value).unwrap(), now)
}

#[test]
fn retry_after_delta_seconds() {
    let now = SystemTime::now();
    assert_eq!(retry_after("0", now), Some(Duration::ZERO));
    assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
    assert_eq!(retry_after(" 30 ", now), Some(Duration::from_secs(30)));
    assert_eq!(retry_after("3600", now), Some(RETRY_AFTER_CAP));
    assert_eq!(retry_after("86400", now), Some(RETRY_AFTER_CAP));
    assert_eq!(
        retry_after("99999999999999999999999999", now),
        Some(RETRY_AFTER_CAP)
    );
}

#[test]
fn retry_after_http_date() {
    // Sun, 06 Nov 1994 08:49:37 GMT
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    let value = "Sun, 06 Nov 1994 08:49:37 GMT";
    assert_eq!(
        retry_after(value, date - Duration::from_secs(90)),
        Some(Duration::from_secs(90))
    );
    assert_eq!(retry_after(value, date), Some(Duration::ZERO));
    assert_eq!(
        retry_after(value, date + Duration::from_secs(5)),
        Some(Duration::ZERO)
    );
    assert_eq!(
        retry_after(value, date - Duration::from_secs(86_400)),
        Some(RETRY_AFTER_CAP)
    );
    // The obsolete forms httpdate accepts too.
    assert_eq!(
        retry_after(
            "Sunday, 06-Nov-94 08:49:37 GMT",
            date - Duration::from_secs(1)
        ),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn retry_after_garbage_is_ignored() {
    let now = SystemTime::now();
    for value in [
        "",
        "soon",
        "-5",
        "1.5",
        "+10",
        "12abc",
        "Sun, 99 Nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(retry_after(value, now), None, "{value:?}");
    }
    let opaque = HeaderValue::from_bytes(b"\xff12").unwrap();
    assert_eq!(parse_retry_after(&opaque, now), None);
}

#[test]
fn content_type_description() {
    let html = HeaderValue::from_static("text/html; charset=utf-8");
    assert_eq!(
        describe_body(Some(&html), 1234),
        "body: text/html; charset=utf-8, 1234 bytes"
    );
    assert_eq!(describe_body(None, 0), "body: no content type, 0 bytes");
    let long = HeaderValue::from_str(&format!("application/{}", "x".repeat(100))).unwrap();
    let text = describe_body(Some(&long), 5);
    assert_eq!(
        text,
        format!("body: application/{}, 5 bytes", "x".repeat(64 - 12))
    );
    let odd = HeaderValue::from_bytes(b"text/\xe9\tplain").unwrap();
    assert_eq!(describe_body(Some(&odd), 1), "body: text/??plain, 1 bytes");
}
