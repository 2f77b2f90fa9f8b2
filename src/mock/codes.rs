//! The `DAERR-` codes that the mock server puts in its error bodies, one per
//! reason, so that a test can tell why a request was refused without parsing
//! the message. Real Daxium codes are not published; these are the mock's own.
//!
//! `01xx` are token endpoint refusals, `02xx` protected resource refusals and
//! `09xx` everything else.

/// 400 from the token endpoint: not a `POST`, not
/// `application/x-www-form-urlencoded`, not a valid form, or a required
/// parameter missing, empty or repeated.
pub const BAD_REQUEST: &str = "DAERR-0100";

/// 400 from the token endpoint: a `grant_type` other than `password` and
/// `refresh_token`.
pub const UNSUPPORTED_GRANT_TYPE: &str = "DAERR-0101";

/// 401 from the token endpoint: `client_id` or `client_secret` is wrong (either grant).
pub const INVALID_CLIENT: &str = "DAERR-0110";

/// 401 from the token endpoint: `username` or `password` is wrong (password grant).
pub const INVALID_CREDENTIALS: &str = "DAERR-0111";

/// 401 from the token endpoint: the refresh token is unknown, revoked, or was
/// issued to another client.
pub const INVALID_REFRESH_TOKEN: &str = "DAERR-0112";

/// 401 from the token endpoint: the refresh token was already spent by an
/// earlier refresh (counted as `refresh_reuse`).
pub const REFRESH_TOKEN_REUSED: &str = "DAERR-0113";

/// 401 from the token endpoint: the refresh token is past the lifetime set
/// with [`refresh_token_lifetime`](super::MockServerBuilder::refresh_token_lifetime)
/// (counted as `refresh_expired`).
pub const EXPIRED_REFRESH_TOKEN: &str = "DAERR-0114";

/// 413 from the token endpoint: the request body is over 64 KiB.
pub const TOKEN_REQUEST_TOO_LARGE: &str = "DAERR-0120";

/// 401 from the API: no `Authorization: Bearer` header.
pub const MISSING_TOKEN: &str = "DAERR-0200";

/// 401 from the API: a bearer token the server never issued, a 401 queued
/// with [`MockServer::fail_next_api`](super::MockServer::fail_next_api), or
/// any request while
/// [`MockServer::refuse_every_token`](super::MockServer::refuse_every_token)
/// is on.
pub const INVALID_TOKEN: &str = "DAERR-0201";

/// 401 from the API: the access token is past its lifetime.
pub const EXPIRED_TOKEN: &str = "DAERR-0202";

/// 401 from the API: the access token was revoked.
pub const REVOKED_TOKEN: &str = "DAERR-0203";

/// 413 from the API: the request body is over 1 MiB.
pub const API_REQUEST_TOO_LARGE: &str = "DAERR-0220";

/// 404: neither the token endpoint nor under `/api/`.
pub const NOT_FOUND: &str = "DAERR-0900";

/// 429 from [`Fault::TooManyRequests`](super::Fault::TooManyRequests).
pub const TOO_MANY_REQUESTS: &str = "DAERR-0929";

/// 500 from [`Fault::ServerError`](super::Fault::ServerError).
pub const SERVER_ERROR: &str = "DAERR-0950";

/// Any status other than 401 queued with [`MockServer::fail_next_api`](super::MockServer::fail_next_api).
pub const INJECTED: &str = "DAERR-0990";
