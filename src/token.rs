//! Tokens and the parsing of the token endpoint's answer. Parsing accepts what
//! real OAuth2 servers send (RFC 6749 §5.1) and refuses what would be unsafe to
//! put in a header; no token is ever shown by `Debug`, and none has `Display`.

use std::{fmt, time::Duration};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{ErrorBody, Kind, TokenError};

/// The longest access or refresh token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The lifetime assumed when `expires_in` is missing, null or not a number:
/// Daxium's documented lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The shortest lifetime a token is given: a positive `expires_in` below it is
/// raised to it, so a token is never refreshed more than twice a second.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The longest lifetime a token is given: a larger `expires_in` is absurd, and
/// must not mean "never expires".
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An access token, kept as the ready-made `Authorization: Bearer …` header
/// value (marked sensitive), so attaching it costs a reference-count increment.
#[derive(Clone)]
pub struct AccessToken {
    header: HeaderValue,
}

impl AccessToken {
    /// Checks that `token` is an RFC 6750 `b64token` of at most
    /// [`MAX_TOKEN_LEN`] bytes, and makes its header value.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        check_b64token(token).map_err(|reason| invalid_field("access_token", reason))?;
        let mut header = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| invalid_field("access_token", "not a valid header value"))?;
        header.set_sensitive(true);
        Ok(Self { header })
    }

    pub(crate) fn from_header_value(header: HeaderValue) -> Self {
        Self { header }
    }

    pub(crate) fn into_header(self) -> HeaderValue {
        self.header
    }

    /// The `Authorization` header value, marked sensitive.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// The token itself. Handle with care: it is a bearer credential.
    pub fn expose_secret(&self) -> &str {
        let bytes = &self.header.as_bytes()["Bearer ".len()..];
        // The header was built from a `&str` of b64token characters (ASCII).
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(****)")
    }
}

/// A refresh token. Spent by the endpoint the moment a refresh is sent.
#[derive(Clone)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// Checks that `token` is non-empty, at most [`MAX_TOKEN_LEN`] bytes, and
    /// free of control characters.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        if token.is_empty() {
            return Err(invalid_field("refresh_token", "empty"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid_field("refresh_token", "longer than 8 KiB"));
        }
        if token.chars().any(char::is_control) {
            return Err(invalid_field("refresh_token", "holds a control character"));
        }
        Ok(Self(SecretString::from(token)))
    }

    /// The token itself.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(****)")
    }
}

/// What a successful grant returns: an access token, maybe a new refresh
/// token, and how long the access token lives.
#[derive(Clone)]
pub struct TokenPair {
    access: AccessToken,
    refresh: Option<RefreshToken>,
    lifetime: Duration,
    scope: Option<String>,
}

impl TokenPair {
    /// A token pair. `lifetime` is clamped to
    /// [`MIN_LIFETIME`]..=[`MAX_LIFETIME`].
    pub fn new(access: AccessToken, refresh: Option<RefreshToken>, lifetime: Duration) -> Self {
        Self {
            access,
            refresh,
            lifetime: lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME),
            scope: None,
        }
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access
    }

    /// The refresh token, if the response had one. A refresh answer without
    /// one keeps the refresh token that was sent.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh.as_ref()
    }

    /// How long the access token lives, counted from when the grant was sent,
    /// after the rule of [`parse_token_response`].
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The granted scope, if the response said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    pub(crate) fn into_parts(self) -> (AccessToken, Option<RefreshToken>, Duration) {
        (self.access, self.refresh, self.lifetime)
    }
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &self.access)
            .field("refresh_token", &self.refresh)
            .field("lifetime", &self.lifetime)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Parses the body of a 2xx token response.
///
/// - `access_token`: required, an RFC 6750 `b64token` of at most 8 KiB.
/// - `token_type`: `bearer` in any case; a missing one is taken as bearer;
///   anything else is refused.
/// - `refresh_token`: optional; when absent the caller keeps the old one.
/// - `expires_in`: a number or a numeric string. **The lifetime rule:** a
///   missing, null, non-numeric, zero or negative value means
///   [`DEFAULT_LIFETIME`] (3600 s, Daxium's documented lifetime: a server that
///   gives no usable lifetime is taken at its documented word, and a token
///   that dies sooner is caught by the 401 replay); a positive number is
///   clamped to [`MIN_LIFETIME`] (1 s) ..= [`MAX_LIFETIME`] (24 h). So no value
///   means "refresh on every request" and none means "never expires";
///   fractions are rounded down; nothing overflows.
/// - Unknown fields are ignored. A body holding an `error` field is an error
///   even with a 2xx status.
///
/// Errors name the field at fault, never its value, and never copy the body.
pub fn parse_token_response(body: &[u8]) -> Result<TokenPair, TokenError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        access_token: Option<serde_json::Value>,
        refresh_token: Option<serde_json::Value>,
        expires_in: Option<serde_json::Value>,
        token_type: Option<serde_json::Value>,
        scope: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
    }

    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        // serde_json's own message may quote the input: say where, not what.
        TokenError::new(Kind::InvalidResponse).with_detail(format!(
            "malformed JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;

    if raw.error.is_some() {
        let err = TokenError::new(Kind::InvalidResponse);
        return Err(match ErrorBody::parse(body) {
            Some(parsed) if parsed.is_refusal() => {
                TokenError::new(Kind::Rejected).with_body(parsed)
            }
            Some(parsed) => err.with_body(parsed),
            None => err.with_detail("2xx response with an `error` field"),
        });
    }

    // The refresh token first: a refresh answer rotated it even when the rest
    // is unusable, and the cache must not lose it.
    let refresh = match raw.refresh_token {
        Some(serde_json::Value::String(s)) => Some(RefreshToken::new(&s)?),
        None | Some(serde_json::Value::Null) => None,
        Some(_) => return Err(invalid_field("refresh_token", "not a string")),
    };
    let salvage = |err: TokenError| match &refresh {
        Some(rotated) => err.with_refresh_token(rotated.clone()),
        None => err,
    };

    let access = match raw.access_token {
        Some(serde_json::Value::String(s)) => AccessToken::new(&s).map_err(salvage)?,
        Some(serde_json::Value::Null) | None => {
            return Err(salvage(invalid_field("access_token", "missing")));
        }
        Some(_) => return Err(salvage(invalid_field("access_token", "not a string"))),
    };

    match raw.token_type {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(t)) if t.trim().eq_ignore_ascii_case("bearer") => {}
        Some(serde_json::Value::String(_)) => {
            return Err(salvage(invalid_field("token_type", "not bearer")));
        }
        Some(_) => return Err(salvage(invalid_field("token_type", "not a string"))),
    }

    let scope = match raw.scope {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };

    let mut pair = TokenPair::new(access, refresh, lifetime(raw.expires_in.as_ref()));
    pair.scope = scope;
    Ok(pair)
}

/// The lifetime rule of [`parse_token_response`].
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = match expires_in {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match seconds {
        Some(s) if s.is_nan() || s.floor() <= 0.0 => DEFAULT_LIFETIME,
        // Clamping in f64 first keeps `from_secs_f64` away from its panics.
        Some(s) => Duration::from_secs_f64(
            s.floor()
                .clamp(MIN_LIFETIME.as_secs_f64(), MAX_LIFETIME.as_secs_f64()),
        ),
        None => DEFAULT_LIFETIME,
    }
}

fn invalid_field(field: &'static str, reason: &'static str) -> TokenError {
    TokenError::new(Kind::InvalidResponse).with_detail(format!("`{field}` {reason}"))
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn check_b64token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("empty");
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err("longer than 8 KiB");
    }
    let body = token.trim_end_matches('=');
    if body.is_empty() {
        return Err("not an RFC 6750 b64token");
    }
    let ok = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'));
    if ok {
        Ok(())
    } else {
        Err("not an RFC 6750 b64token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err =
            parse(r#"{"access_token":"abc\r\nX-Evil: 1","token_type":"bearer"}"#).unwrap_err();
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
        let pair =
            parse(r#"{"access_token":"abc","token_type":"bearer","expires_in":60}"#).unwrap();
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
    fn ok_body_with_error_field_is_an_error() {
        let err = parse(r#"{"error":"invalid_grant","error_description":"spent"}"#).unwrap_err();
        assert!(err.is_grant_rejected());
        assert_eq!(err.error_code(), Some("invalid_grant"));
        let err = parse(r#"{"access_token":"abc","error":"server_error"}"#).unwrap_err();
        assert!(err.is_invalid_response() && err.is_transient());
    }

    #[test]
    fn malformed_json_never_echoes_the_body() {
        let err = parse(r#"{"access_token": "sentinel-secret-tok"#).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(err.is_invalid_response());
        assert!(text.contains("malformed JSON"));
        assert!(!text.contains("sentinel"));
        let err =
            parse(r#"{"access_token": ["sentinel-secret-tok"], "expires_in": "x"}"#).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("sentinel"));
    }

    #[test]
    fn a_rotated_refresh_token_survives_an_unusable_answer() {
        let err = parse(r#"{"access_token":"bad token","refresh_token":"r2"}"#).unwrap_err();
        assert!(!format!("{err:?} {err}").contains("r2"));
        let shared = err.clone();
        let (err, rotated) = err.split_refresh_token();
        assert_eq!(rotated.unwrap().expose_secret(), "r2");
        assert!(err.is_invalid_response());
        // A clone handed out before keeps its own copy; nothing panics.
        assert_eq!(
            shared.split_refresh_token().1.unwrap().expose_secret(),
            "r2"
        );
        let err =
            parse(r#"{"access_token":"ok","token_type":"mac","refresh_token":"r3"}"#).unwrap_err();
        assert_eq!(err.split_refresh_token().1.unwrap().expose_secret(), "r3");
        let err = parse(r#"{"token_type":"bearer"}"#).unwrap_err();
        assert!(err.split_refresh_token().1.is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let pair =
            parse(r#"{"access_token":"acc-sentinel","refresh_token":"ref-sentinel"}"#).unwrap();
        let text = format!(
            "{pair:?} {:?} {:?}",
            pair.access_token(),
            pair.refresh_token()
        );
        assert!(!text.contains("sentinel"));
        assert!(text.contains("****"));
    }

    #[test]
    fn refresh_token_validation() {
        assert!(RefreshToken::new("").is_err());
        assert!(RefreshToken::new("a\nb").is_err());
        assert!(RefreshToken::new(&"r".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert_eq!(RefreshToken::new("a b&c").unwrap().expose_secret(), "a b&c");
    }

    #[test]
    fn token_pair_new_clamps() {
        let access = AccessToken::new("abc").unwrap();
        assert_eq!(
            TokenPair::new(access.clone(), None, Duration::ZERO).lifetime(),
            MIN_LIFETIME
        );
        assert_eq!(
            TokenPair::new(access, None, Duration::MAX).lifetime(),
            MAX_LIFETIME
        );
    }
}
