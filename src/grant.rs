//! The grants the Daxium token endpoint serves: [`GrantType`] names one, and
//! [`GrantRequest`] is one to make, with its form body. A leaf below the error
//! types and the fetchers, so that both can speak of grants without importing
//! each other.

use std::{fmt, sync::Arc};

use secrecy::ExposeSecret;

use crate::{credentials::Credentials, token::RefreshToken};

/// The two grants the Daxium token endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantType {
    /// `grant_type=password`: client id and secret, username and password.
    Password,
    /// `grant_type=refresh_token`: client id and secret and a refresh token.
    RefreshToken,
}

impl GrantType {
    /// The `grant_type` form value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::RefreshToken => "refresh_token",
        }
    }
}

impl fmt::Display for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One grant to make. `Debug` shows the grant type and the client id only.
#[derive(Clone)]
pub struct GrantRequest {
    credentials: Arc<Credentials>,
    refresh_token: Option<RefreshToken>,
}

impl GrantRequest {
    /// A password grant.
    pub fn password(credentials: Arc<Credentials>) -> Self {
        Self {
            credentials,
            refresh_token: None,
        }
    }

    /// A refresh-token grant.
    pub fn refresh(credentials: Arc<Credentials>, refresh_token: RefreshToken) -> Self {
        Self {
            credentials,
            refresh_token: Some(refresh_token),
        }
    }

    /// Which grant this is.
    pub fn grant_type(&self) -> GrantType {
        if self.refresh_token.is_some() {
            GrantType::RefreshToken
        } else {
            GrantType::Password
        }
    }

    /// The login the grant is made for.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The refresh token, for a refresh grant.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The `application/x-www-form-urlencoded` body of the grant, as the Daxium
    /// endpoint expects it. It holds secrets: send it in a request body only.
    pub fn form_body(&self) -> String {
        let creds = &*self.credentials;
        let mut fields: Vec<(&str, &str)> = vec![
            ("grant_type", self.grant_type().as_str()),
            ("client_id", creds.client_id()),
            ("client_secret", creds.client_secret().expose_secret()),
        ];
        match &self.refresh_token {
            Some(refresh) => fields.push(("refresh_token", refresh.expose_secret())),
            None => {
                fields.push(("username", creds.username()));
                fields.push(("password", creds.password().expose_secret()));
            }
        }
        // Serializing a list of string pairs cannot fail.
        serde_urlencoded::to_string(&fields).unwrap_or_default()
    }
}

impl fmt::Debug for GrantRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantRequest")
            .field("grant_type", &self.grant_type())
            .field("client_id", &self.credentials.client_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Arc<Credentials> {
        Arc::new(Credentials::new(
            "cid",
            "c&s=cr+t",
            "me@example.com",
            "p&ss=w+rd%é",
        ))
    }

    #[test]
    fn password_form_body_is_exact() {
        let body = GrantRequest::password(creds()).form_body();
        assert_eq!(
            body,
            "grant_type=password&client_id=cid&client_secret=c%26s%3Dcr%2Bt\
             &username=me%40example.com&password=p%26ss%3Dw%2Brd%25%C3%A9"
        );
    }

    #[test]
    fn refresh_form_body_is_exact() {
        let refresh = RefreshToken::new("r/1+2=").unwrap();
        let body = GrantRequest::refresh(creds(), refresh).form_body();
        assert_eq!(
            body,
            "grant_type=refresh_token&client_id=cid&client_secret=c%26s%3Dcr%2Bt&refresh_token=r%2F1%2B2%3D"
        );
    }

    #[test]
    fn grant_request_debug_has_no_secret() {
        let refresh = RefreshToken::new("refresh-sentinel").unwrap();
        let text = format!("{:?}", GrantRequest::refresh(creds(), refresh));
        assert!(text.contains("RefreshToken") && text.contains("cid"));
        assert!(!text.contains("sentinel") && !text.contains("p&ss"));
    }
}
