//! The protected resource's decisions: [`decide_api`] refuses every token
//! while the server is told to, or checks a presented access token against
//! the books, then does to a valid one what the server was set to do to
//! tokens in use (revoke it at a rate), and returns the
//! answer and its outcome, which the server then sends and counts;
//! [`hold_back`] draws how long the answer waits. The settings that shape
//! the decisions are here too.

use std::time::Duration;

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
    pub(super) slow: Option<SlowApi>,
    /// Whether refusals are answered as a gRPC server answers them.
    pub(super) grpc_refusals: bool,
}

/// A fraction of the answers held back.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlowApi {
    pub(super) fraction: f64,
    pub(super) latency: Duration,
}

/// Decides whether the protected resource lets `presented` through at `now`,
/// and how the request ended. While `refuse_every_token`, nothing is.
pub(super) fn decide_api(
    books: &mut Books,
    dice: &mut Dice,
    config: &ApiConfig,
    refuse_every_token: bool,
    presented: Presented<'_>,
    now: Instant,
) -> (Result<(), ApiDenial>, ApiOutcome) {
    if refuse_every_token {
        // Not a word about the token, whatever it was, and nothing revoked:
        // the trouble is the server's, and ends when it is switched off.
        return (Err(ApiDenial::Unknown), ApiOutcome::RefusedAll);
    }
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

/// How long an answer just decided waits before it is sent: the latency of
/// [`SlowApi`] for its fraction of the answers, drawn after the decision so
/// that the revocations draw the same whether or not answers are slow.
pub(super) fn hold_back(dice: &mut Dice, config: &ApiConfig) -> Option<Duration> {
    let slow = config.slow?;
    dice.chance(slow.fraction).then_some(slow.latency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::books::Login;

    /// Books holding one valid token, and the protected resource's settings.
    struct Fixture {
        books: Books,
        token: String,
        dice: Dice,
        config: ApiConfig,
        refuse_every_token: bool,
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
                config: ApiConfig {
                    revoke_presented,
                    slow: None,
                    grpc_refusals: false,
                },
                refuse_every_token: false,
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
                self.refuse_every_token,
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

    #[test]
    fn refusing_every_token_refuses_valid_ones_without_revoking_them() {
        let mut fixture = Fixture::new(1.0);
        fixture.refuse_every_token = true;
        let refused = (Err(ApiDenial::Unknown), ApiOutcome::RefusedAll);
        assert_eq!(fixture.decide(None), refused);
        assert_eq!(fixture.decide(Some(Presented::Nothing)), refused);
        fixture.refuse_every_token = false;
        fixture.config.revoke_presented = 0.0;
        assert_eq!(fixture.decide(None), (Ok(()), ApiOutcome::Checked(Ok(()))));
    }

    #[test]
    fn a_fraction_of_answers_is_held_back_for_the_latency() {
        let latency = Duration::from_millis(250);
        let mut config = ApiConfig {
            revoke_presented: 0.0,
            slow: None,
            grpc_refusals: false,
        };
        let mut dice = Dice::seeded(3);
        assert_eq!(hold_back(&mut dice, &config), None);
        config.slow = Some(SlowApi {
            fraction: 1.0,
            latency,
        });
        assert_eq!(hold_back(&mut dice, &config), Some(latency));
        config.slow = Some(SlowApi {
            fraction: 0.1,
            latency,
        });
        let held = (0..10_000)
            .filter(|_| hold_back(&mut dice, &config).is_some())
            .count();
        // 1,000 expected; five standard deviations (150) either side.
        assert!((850..=1_150).contains(&held), "{held}");
    }
}
