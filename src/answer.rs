//! What the token endpoint answers, read: [`parse_token_response`] for the body
//! of a 2xx and [`ErrorBody::parse`] for an error body, side by side. Parsing
//! accepts what real OAuth2 servers send (RFC 6749 §5.1, §5.2) and refuses what
//! would be unsafe to put in a header; no error quotes a token or a 2xx body.

use std::time::Duration;

use crate::{
    error::{ErrorBody, Kind, TokenError},
    token::{
        AccessToken, DEFAULT_LIFETIME, MAX_LIFETIME, MAX_REFRESH_LIFETIME, MIN_LIFETIME,
        RefreshToken, TokenPair,
    },
};

/// The longest text kept from an error body, in bytes.
const TEXT_CAP: usize = 256;

// === the 2xx body ===

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
/// - `refresh_expires_in` (Keycloak and others send it): read as `expires_in`
///   is, but a missing, null, non-numeric, zero or negative value means that
///   the lifetime is unknown (Keycloak says 0 for a refresh token that does
///   not expire): the refresh token is then good until the endpoint refuses
///   it. A positive number is clamped to [`MIN_LIFETIME`] (1 s) ..=
///   [`MAX_REFRESH_LIFETIME`] (366 days). The token cache never sends a
///   refresh token past its expiry: the password grant goes at once instead.
/// - `error`: a non-empty string makes the answer an error even with a 2xx
///   status: a [refusal](TokenError::is_grant_rejected) when it is an RFC 6749
///   §5.2 refusal code (`invalid_grant`, `invalid_client`, …), else an
///   [invalid response](TokenError::is_invalid_response). Any other value
///   (`false`, `null`, `""`, a number) states no error and is ignored.
/// - Unknown fields are ignored.
///
/// A rotated `refresh_token` is kept in the error when the rest of the answer
/// is unusable or states an error, so that the token cache does not lose it.
/// Errors name the field at fault, never its value, and never copy the body.
pub fn parse_token_response(body: &[u8]) -> Result<TokenPair, TokenError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        access_token: Option<serde_json::Value>,
        refresh_token: Option<serde_json::Value>,
        expires_in: Option<serde_json::Value>,
        refresh_expires_in: Option<serde_json::Value>,
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

    // The refresh token first: a refresh answer rotated it even when the rest
    // is unusable or states an error, and the cache must not lose it.
    let refresh = match raw.refresh_token {
        Some(serde_json::Value::String(s)) => RefreshToken::new(&s).map(Some),
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(_) => Err(TokenError::invalid_field("refresh_token", "not a string")),
    };
    let salvage = |err: TokenError| match &refresh {
        Ok(Some(rotated)) => err.with_refresh_token(rotated.clone()),
        Ok(None) | Err(_) => err,
    };

    if let Some(err) = stated_error(raw.error.as_ref(), body) {
        return Err(salvage(err));
    }

    let access = match raw.access_token {
        Some(serde_json::Value::String(s)) => AccessToken::new(&s).map_err(salvage)?,
        Some(serde_json::Value::Null) | None => {
            return Err(salvage(TokenError::invalid_field(
                "access_token",
                "missing",
            )));
        }
        Some(_) => {
            return Err(salvage(TokenError::invalid_field(
                "access_token",
                "not a string",
            )));
        }
    };

    match raw.token_type {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(t)) if t.trim().eq_ignore_ascii_case("bearer") => {}
        Some(serde_json::Value::String(_)) => {
            return Err(salvage(TokenError::invalid_field(
                "token_type",
                "not bearer",
            )));
        }
        Some(_) => {
            return Err(salvage(TokenError::invalid_field(
                "token_type",
                "not a string",
            )));
        }
    }

    let scope = match raw.scope {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };

    let mut pair = TokenPair::new(access, refresh?, lifetime(raw.expires_in.as_ref()));
    if let Some(refresh_lifetime) = seconds(raw.refresh_expires_in.as_ref()) {
        pair = pair.with_refresh_token_lifetime(refresh_lifetime);
    }
    Ok(pair.with_scope(scope))
}

/// The error that a 2xx body states in its `error` member, if it is a
/// non-empty string.
fn stated_error(error: Option<&serde_json::Value>, body: &[u8]) -> Option<TokenError> {
    match error? {
        serde_json::Value::String(code) if !code.trim().is_empty() => {}
        _ => return None,
    }
    Some(match ErrorBody::parse(body) {
        Some(parsed) if parsed.is_refusal() => TokenError::new(Kind::Rejected).with_body(parsed),
        Some(parsed) => TokenError::new(Kind::InvalidResponse).with_body(parsed),
        None => TokenError::new(Kind::InvalidResponse).with_detail("2xx answer states an error"),
    })
}

/// The lifetime rule of [`parse_token_response`].
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    seconds(expires_in).map_or(DEFAULT_LIFETIME, |s| s.clamp(MIN_LIFETIME, MAX_LIFETIME))
}

/// A whole, positive number of seconds from a number or a numeric string,
/// at most [`MAX_REFRESH_LIFETIME`] (the longer of the two caps); `None` for
/// anything else.
fn seconds(value: Option<&serde_json::Value>) -> Option<Duration> {
    let seconds = match value? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    let whole = seconds.floor();
    // NaN fails the comparison too. Capping in f64 first keeps
    // `from_secs_f64` away from its panics.
    (whole >= 1.0).then(|| Duration::from_secs_f64(whole.min(MAX_REFRESH_LIFETIME.as_secs_f64())))
}

// === the error body ===

impl ErrorBody {
    /// Parses an error body; `None` when it is neither form, that is when it
    /// has no `code` and no `error` that is a non-empty string (a gateway's
    /// `{"code": 400, …}` is neither form).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Raw {
            code: Option<serde_json::Value>,
            message: Option<serde_json::Value>,
            url: Option<serde_json::Value>,
            server_time: Option<serde_json::Value>,
            error: Option<serde_json::Value>,
            error_description: Option<serde_json::Value>,
            error_uri: Option<serde_json::Value>,
        }
        fn text(v: Option<serde_json::Value>) -> Option<String> {
            let s = match v? {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(cut(s.trim()))
        }
        fn code(v: Option<serde_json::Value>) -> Option<String> {
            match v? {
                serde_json::Value::String(s) if !s.trim().is_empty() => Some(cut(s.trim())),
                _ => None,
            }
        }
        let raw: Raw = serde_json::from_slice(bytes).ok()?;
        let body = Self {
            code: code(raw.code),
            message: text(raw.message),
            url: text(raw.url),
            server_time: text(raw.server_time),
            error: code(raw.error),
            error_description: text(raw.error_description),
            error_uri: text(raw.error_uri),
        };
        (body.code.is_some() || body.error.is_some()).then_some(body)
    }

    /// Whether the body refuses the grant itself: a Daxium `DAERR-` code, or
    /// an RFC 6749 §5.2 `error` that refuses the request, the client or the
    /// grant (`temporarily_unavailable` or `slow_down`, say, do not).
    pub(crate) fn is_refusal(&self) -> bool {
        let daxium = self
            .code
            .as_deref()
            .is_some_and(|c| c.starts_with("DAERR-"));
        daxium
            || matches!(
                self.error.as_deref(),
                Some(
                    "invalid_grant"
                        | "invalid_client"
                        | "unauthorized_client"
                        | "unsupported_grant_type"
                        | "invalid_request"
                        | "invalid_scope"
                        | "access_denied"
                )
            )
    }
}

fn cut(s: &str) -> String {
    if s.len() <= TEXT_CAP {
        return s.to_owned();
    }
    let mut end = TEXT_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests;
