//! Table tests of the close with a token store: whatever step of the store's
//! protocol a flight is at, the close releases the lease exactly when this
//! replica holds it or may yet be granted it, fails the waiters, and nothing
//! that answers after it starts anything.

use std::time::Duration;

use super::super::{
    Action, Answer, CacheConfig, Core, Event, FlightId, Granted, StoreCall, StoreReply, Time,
    WaiterId, Why,
};
use super::harness::{T, TErr};

/// What happens to the flight before the close.
#[derive(Clone, Copy)]
enum Before {
    /// The store answers the call in flight.
    Reply(fn() -> StoreReply<T>),
    /// The token server answers the grant with a pair.
    Granted,
}

/// A core of a replica that shares a store, with its flight.
struct Replica {
    core: Core<T>,
    flight: Option<FlightId>,
    now: Time,
}

impl Replica {
    fn new() -> Self {
        let config = CacheConfig {
            shared: true,
            ..CacheConfig::default()
        };
        Self {
            core: Core::new(config),
            flight: None,
            now: Time::ZERO,
        }
    }

    fn step(&mut self, event: Event<T>) -> Vec<Action<T>> {
        self.now += Duration::from_millis(1);
        let mut out = Vec::new();
        self.core.handle(self.now, event, &mut out);
        for action in &out {
            if let Action::Store { flight, .. } | Action::Start { flight, .. } = action {
                self.flight = Some(*flight);
            }
        }
        out
    }

    fn flight(&self) -> FlightId {
        self.flight.expect("a flight")
    }

    fn apply(&mut self, before: Before) -> Vec<Action<T>> {
        let flight = self.flight();
        match before {
            Before::Reply(reply) => self.step(Event::Stored {
                flight,
                reply: reply(),
            }),
            Before::Granted => {
                let grant = Granted {
                    access: 7,
                    refresh: Some(8),
                    lifetime: Duration::from_secs(3600),
                    refresh_lifetime: None,
                    sent_at: self.now,
                    jitter: 0.0,
                };
                self.step(Event::Granted { flight, grant })
            }
        }
    }
}

fn releases(actions: &[Action<T>]) -> usize {
    (actions.iter())
        .filter(|a| {
            matches!(
                a,
                Action::Store {
                    call: StoreCall::Release,
                    ..
                }
            )
        })
        .count()
}

#[test]
fn a_close_releases_the_lease_when_this_replica_holds_it_or_asked_for_it() {
    let leased = || StoreReply::Leased;
    let no_record = || StoreReply::Record(None);
    let held = || StoreReply::Held(Some(Duration::from_secs(1)));
    let cases: [(&str, &[Before], usize); 5] = [
        ("the lease asked for", &[], 1),
        (
            "the record read under the lease",
            &[Before::Reply(leased)],
            1,
        ),
        (
            "the grant sent under the lease",
            &[Before::Reply(leased), Before::Reply(no_record)],
            1,
        ),
        (
            "the pair being written",
            &[
                Before::Reply(leased),
                Before::Reply(no_record),
                Before::Granted,
            ],
            1,
        ),
        (
            "another replica's lease waited on",
            &[Before::Reply(held)],
            0,
        ),
    ];
    for (step, before, expected) in cases {
        let mut replica = Replica::new();
        let need = Event::Need {
            waiter: WaiterId(1),
            deadline: Duration::from_secs(10),
            not: None,
        };
        replica.step(need);
        for &b in before {
            replica.apply(b);
        }
        let flight = replica.flight();
        let closed = replica.step(Event::Close);
        assert_eq!(releases(&closed), expected, "{step}");
        assert!(
            closed
                .iter()
                .any(|a| matches!(a, Action::Abort { flight: f } if *f == flight)),
            "{step}: the flight is aborted"
        );
        // A waiter still waiting learns of the close.
        let answered_closed = closed.iter().any(|a| {
            matches!(
                a,
                Action::Answer {
                    answer: Answer::Failed(TErr::Core(Why::Closed)),
                    ..
                }
            )
        });
        let had_token = before.iter().any(|b| matches!(b, Before::Granted));
        assert_eq!(answered_closed, !had_token, "{step}");

        // What answers after the close starts nothing, and releases nothing
        // again.
        let late = replica.step(Event::Stored {
            flight,
            reply: StoreReply::Written(1),
        });
        assert!(late.is_empty(), "{step}: {} actions", late.len());
        let again = replica.step(Event::Close);
        assert!(again.is_empty(), "{step}: a second close does nothing");
    }
}

#[test]
fn a_close_after_the_flight_released_the_lease_releases_nothing() {
    let mut replica = Replica::new();
    replica.step(Event::Need {
        waiter: WaiterId(1),
        deadline: Duration::from_secs(10),
        not: None,
    });
    replica.apply(Before::Reply(|| StoreReply::Leased));
    replica.apply(Before::Reply(|| StoreReply::Record(None)));
    replica.apply(Before::Granted);
    let written = replica.apply(Before::Reply(|| StoreReply::Written(1)));
    assert_eq!(releases(&written), 1, "the write's own release");
    let closed = replica.step(Event::Close);
    assert_eq!(releases(&closed), 0);
    assert!(!closed.iter().any(|a| matches!(a, Action::Abort { .. })));
}
