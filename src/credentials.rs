//! The login of a Daxium client: the OAuth client id and secret, and the user's
//! name and password. Secrets live in [`secrecy`] types, so they are zeroized on
//! drop and never printed by `Debug`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// What the password grant sends: client id and secret, username and password.
///
/// `Debug` shows the client id and the username, never the secret or the password;
/// there is no `Display`.
///
/// ```
/// use daxium_auth::Credentials;
///
/// let creds = Credentials::new("my-client", "client-secret", "me@example.com", "hunter2");
/// let printed = format!("{creds:?}");
/// assert!(printed.contains("my-client"));
/// assert!(!printed.contains("hunter2") && !printed.contains("client-secret"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    client_id: String,
    client_secret: SecretString,
    username: String,
    password: SecretString,
}

impl Credentials {
    /// Credentials for the password grant.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: SecretString::from(client_secret.into()),
            username: username.into(),
            password: SecretString::from(password.into()),
        }
    }

    /// The OAuth client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The OAuth client secret.
    pub fn client_secret(&self) -> &SecretString {
        &self.client_secret
    }

    /// The user's name (an e-mail address for Daxium).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The user's password.
    pub fn password(&self) -> &SecretString {
        &self.password
    }

    /// Whether two credentials are the same login, compared without exposing them.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        self.client_id == other.client_id
            && self.username == other.username
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret_and_password() {
        let creds = Credentials::new("cid", "s3cr3t-client", "u@example.com", "p4ss&word");
        let text = format!("{creds:?} {creds:#?}");
        assert!(text.contains("cid") && text.contains("u@example.com"));
        assert!(!text.contains("s3cr3t-client"));
        assert!(!text.contains("p4ss&word"));
    }

    #[test]
    fn same_as_compares_every_part() {
        let a = Credentials::new("c", "s", "u", "p");
        assert!(a.same_as(&a.clone()));
        assert!(!a.same_as(&Credentials::new("c", "s", "u", "q")));
        assert!(!a.same_as(&Credentials::new("c", "t", "u", "p")));
    }
}
