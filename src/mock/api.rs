//! The protected resource's decisions: [`decide_api`] checks a presented
//! access token against the books, then does to a valid one what the server
//! was set to do to tokens in use (revoke it at a rate), and returns the
//! answer and its outcome, which the server then sends and counts. The
//! settings that shape the decisions are here too.

use tokio::time::Instant;

use super::{
    books::{ApiDenial, Books, Presented},
    counters::ApiOutcome,
    dice::Dice,
};

/// Settings of the protected resource, fixed at start.
#[derive(Debug, Clone)]
pub(super) struct ApiConfig {
    /// The probability that a valid token presented is revoked on the spot.
    pub(super) revoke_presented: f64,
}

/// Decides whether the protected resource lets `presented` through at `now`,
/// and how the request ended.
pub(super) fn decide_api(
    books: &mut Books,
    dice: &mut Dice,
    config: &ApiConfig,
    presented: Presented<'_>,
    now: Instant,
) -> (Result<(), ApiDenial>, ApiOutcome) {
    let checked = books.check(presented, now);
    if let (Ok(()), Presented::Bearer(token)) = (checked, presented)
        && dice.chance(config.revoke_presented)
    {
        // Revoked for good, as a server that revokes a session would: the
        // next request with this token is refused too, by the books.
        books.revoke(token);
        return (Err(ApiDenial::Revoked), ApiOutcome::RevokedInUse);
    }
    (checked, ApiOutcome::Checked(checked))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mock::books::Login;

    /// Books holding one valid token, and the protected resource's settings.
    struct Fixture {
        books: Books,
        token: String,
        dice: Dice,
        config: ApiConfig,
        now: Instant,
    }

    impl Fixture {
        fn new(revoke_presented: f64) -> Self {
            let now = Instant::now();
            let mut books = Books::new();
            let login = Login {
                client_id: "cid".into(),
                username: "user".into(),
            };
            let token = books.issue_access(login, Duration::from_secs(60), now);
            Self {
                books,
                token,
                dice: Dice::seeded(1),
                config: ApiConfig { revoke_presented },
                now,
            }
        }

        fn decide(
            &mut self,
            presented: Option<Presented<'_>>,
        ) -> (Result<(), ApiDenial>, ApiOutcome) {
            let token = self.token.clone();
            let presented = presented.unwrap_or(Presented::Bearer(&token));
            decide_api(
                &mut self.books,
                &mut self.dice,
                &self.config,
                presented,
                self.now,
            )
        }
    }

    #[test]
    fn a_rate_of_one_revokes_the_token_presented_for_good() {
        let mut fixture = Fixture::new(1.0);
        assert_eq!(
            fixture.decide(None),
            (Err(ApiDenial::Revoked), ApiOutcome::RevokedInUse)
        );
        // Already revoked: an ordinary refusal from now on.
        let revoked = Err(ApiDenial::Revoked);
        assert_eq!(
            fixture.decide(None),
            (revoked, ApiOutcome::Checked(revoked))
        );
    }

    #[test]
    fn only_valid_tokens_are_revoked_at_the_rate() {
        let mut fixture = Fixture::new(1.0);
        for (presented, denial) in [
            (Presented::Nothing, ApiDenial::NoToken),
            (Presented::Bearer("made-up"), ApiDenial::Unknown),
            (Presented::Garbage, ApiDenial::Unknown),
        ] {
            assert_eq!(
                fixture.decide(Some(presented)),
                (Err(denial), ApiOutcome::Checked(Err(denial)))
            );
        }
        fixture.now += Duration::from_secs(61);
        assert_eq!(
            fixture.decide(None).1,
            ApiOutcome::Checked(Err(ApiDenial::Expired))
        );
    }

    #[test]
    fn a_rate_of_zero_lets_every_valid_token_through() {
        let mut fixture = Fixture::new(0.0);
        for _ in 0..1000 {
            assert_eq!(fixture.decide(None), (Ok(()), ApiOutcome::Checked(Ok(()))));
        }
    }
}
