//! [`Refusal`]: which answers of the API say that it refused the token a
//! request carried. A refused request makes the layer drop that token (if it
//! is still the current one) and send the request again with the next.

use std::fmt;

use http::{
    HeaderMap, HeaderName, StatusCode,
    header::{HeaderValue, WWW_AUTHENTICATE},
};

/// `grpc-status`, which a gRPC server sends in the headers of a
/// trailers-only response.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// gRPC's status code UNAUTHENTICATED.
const UNAUTHENTICATED: &[u8] = b"16";

/// Which answers of the API refuse the token: the rule an
/// [`AuthLayer`](crate::AuthLayer) checks every response against, set with
/// [`AuthLayerBuilder::refused_when`](crate::AuthLayerBuilder::refused_when).
///
/// - [`Refusal::unauthorized`], the default: an HTTP 401, unless its
///   `WWW-Authenticate` challenge names an error other than `invalid_token`
///   (`insufficient_scope`, say: a new token would not help).
/// - [`Refusal::grpc`]: the same, and gRPC's UNAUTHENTICATED (`grpc-status:
///   16`) in a trailers-only response, which is how a gRPC server (tonic's
///   `Status::unauthenticated`) refuses a token: HTTP 200 with the status in
///   the headers and no body. A `grpc-status: 16` in trailers after messages
///   is passed through: the response had begun. Not the default because it
///   costs a header lookup on every response, which plain HTTP traffic has
///   no use for.
/// - [`Refusal::custom`]: any test of the status and headers, for an API
///   that answers 403 for an expired token, or says so in a header. Compose
///   it with [`Refusal::is_unauthorized`] and
///   [`Refusal::is_grpc_unauthenticated`].
///
/// ```
/// use daxium_auth::{AuthLayer, Credentials, Refusal};
/// use http::{HeaderMap, StatusCode};
///
/// fn expired(status: StatusCode, headers: &HeaderMap) -> bool {
///     Refusal::is_unauthorized(status, headers)
///         || (status == StatusCode::FORBIDDEN && headers.contains_key("x-token-expired"))
/// }
///
/// let layer = AuthLayer::builder()
///     .token_url("https://api.daxium-air.com/oauth/v2/token")
///     .credentials(Credentials::new("client-id", "secret", "me@example.com", "password"))
///     .refused_when(Refusal::custom(expired))
///     .build()?;
/// # Ok::<_, daxium_auth::BuildError>(())
/// ```
#[derive(Clone, Copy)]
pub struct Refusal {
    rule: Rule,
}

#[derive(Clone, Copy)]
enum Rule {
    Unauthorized,
    Grpc,
    Custom(fn(StatusCode, &HeaderMap) -> bool),
}

impl Refusal {
    /// An HTTP 401 about the token (the default).
    pub const fn unauthorized() -> Self {
        Self {
            rule: Rule::Unauthorized,
        }
    }

    /// An HTTP 401 about the token, or gRPC's UNAUTHENTICATED in a
    /// trailers-only response. For tonic and other gRPC clients.
    pub const fn grpc() -> Self {
        Self { rule: Rule::Grpc }
    }

    /// Whatever `refused` says of a response's status and headers.
    pub const fn custom(refused: fn(StatusCode, &HeaderMap) -> bool) -> Self {
        Self {
            rule: Rule::Custom(refused),
        }
    }

    /// The default rule: a 401 whose challenge, if any, is about the token.
    /// A `WWW-Authenticate` challenge naming another error
    /// (`insufficient_scope`, say) is not: a new token would not help, and
    /// would cost a grant per request.
    pub fn is_unauthorized(status: StatusCode, headers: &HeaderMap) -> bool {
        status == StatusCode::UNAUTHORIZED && challenges_token(headers)
    }

    /// gRPC's UNAUTHENTICATED in the headers, that is in a trailers-only
    /// response, whatever the HTTP status.
    pub fn is_grpc_unauthenticated(_status: StatusCode, headers: &HeaderMap) -> bool {
        headers
            .get(&GRPC_STATUS)
            .is_some_and(|code| code.as_bytes().trim_ascii() == UNAUTHENTICATED)
    }

    /// Whether a response with this head refuses the token.
    #[inline]
    pub(crate) fn refuses(self, status: StatusCode, headers: &HeaderMap) -> bool {
        match self.rule {
            Rule::Unauthorized => status == StatusCode::UNAUTHORIZED && challenges_token(headers),
            Rule::Grpc => {
                Self::is_unauthorized(status, headers)
                    || Self::is_grpc_unauthenticated(status, headers)
            }
            Rule::Custom(refused) => refused(status, headers),
        }
    }
}

impl Default for Refusal {
    fn default() -> Self {
        Self::unauthorized()
    }
}

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self.rule {
            Rule::Unauthorized => "unauthorized",
            Rule::Grpc => "grpc",
            Rule::Custom(_) => "custom",
        };
        f.debug_tuple("Refusal").field(&rule).finish()
    }
}

/// Whether the `WWW-Authenticate` challenges, if any, are about the token.
#[cold]
fn challenges_token(headers: &HeaderMap) -> bool {
    let mut challenges = headers.get_all(WWW_AUTHENTICATE).iter().peekable();
    if challenges.peek().is_none() {
        return true;
    }
    challenges.any(about_token)
}

fn about_token(value: &HeaderValue) -> bool {
    let value = value.to_str().unwrap_or_default().to_ascii_lowercase();
    !value.contains("error=") || value.contains("invalid_token")
}

/// Whether an answer that is not a refusal shows that the API accepted the
/// token: a success, a redirect, or a client error other than an
/// authentication one or a gateway's (403, 408, 429: often answered before
/// the token is looked at). A 5xx says nothing of the token either.
pub(crate) fn accepts(status: StatusCode) -> bool {
    status.is_success()
        || status.is_redirection()
        || (status.is_client_error()
            && !matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::PROXY_AUTHENTICATION_REQUIRED
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_401_refuses_unless_its_challenge_names_another_error() {
        let rule = Refusal::default();
        assert!(rule.refuses(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        let invalid = headers(&[("www-authenticate", r#"Bearer error="invalid_token""#)]);
        assert!(rule.refuses(StatusCode::UNAUTHORIZED, &invalid));
        let scope = headers(&[("www-authenticate", r#"Bearer error="insufficient_scope""#)]);
        assert!(!rule.refuses(StatusCode::UNAUTHORIZED, &scope));
        let bare = headers(&[("www-authenticate", r#"Bearer realm="daxium""#)]);
        assert!(rule.refuses(StatusCode::UNAUTHORIZED, &bare));
        assert!(!rule.refuses(StatusCode::FORBIDDEN, &HeaderMap::new()));
        assert!(!rule.refuses(StatusCode::OK, &HeaderMap::new()));
    }

    #[test]
    fn grpc_unauthenticated_in_the_headers_refuses_only_under_the_grpc_rule() {
        let trailers_only = headers(&[("content-type", "application/grpc"), ("grpc-status", "16")]);
        assert!(Refusal::grpc().refuses(StatusCode::OK, &trailers_only));
        assert!(!Refusal::unauthorized().refuses(StatusCode::OK, &trailers_only));
        let other = headers(&[("grpc-status", "14")]);
        assert!(!Refusal::grpc().refuses(StatusCode::OK, &other));
        assert!(!Refusal::grpc().refuses(StatusCode::OK, &HeaderMap::new()));
        assert!(Refusal::grpc().refuses(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        assert!(Refusal::is_grpc_unauthenticated(
            StatusCode::OK,
            &headers(&[("grpc-status", " 16 ")])
        ));
    }

    #[test]
    fn a_custom_rule_decides_alone() {
        fn forbidden(status: StatusCode, _: &HeaderMap) -> bool {
            status == StatusCode::FORBIDDEN
        }
        let rule = Refusal::custom(forbidden);
        assert!(rule.refuses(StatusCode::FORBIDDEN, &HeaderMap::new()));
        assert!(!rule.refuses(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        assert_eq!(format!("{rule:?}"), r#"Refusal("custom")"#);
    }

    #[test]
    fn only_answers_about_the_request_show_the_token_was_accepted() {
        for ok in [200, 204, 302, 400, 404, 409, 422] {
            assert!(accepts(StatusCode::from_u16(ok).unwrap()), "{ok}");
        }
        for not in [401, 403, 407, 408, 429, 500, 502, 503] {
            assert!(!accepts(StatusCode::from_u16(not).unwrap()), "{not}");
        }
    }
}
