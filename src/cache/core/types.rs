//! The vocabulary of the cache's core: the events that reach it, the actions
//! it asks its driver to carry out, and the view it publishes for readers. The
//! payloads (header value, refresh token, error) are type parameters, so that
//! tests drive the same core with plain numbers.

use std::time::Duration;

pub(crate) use crate::login::{LoginStatus, TokenSource};

/// A point in time: how long after the driver's origin. The core never reads a
/// clock; every event comes with the time it happened.
pub(crate) type Time = Duration;

/// The payload types of a core. The live cache uses a header value, a
/// [`RefreshToken`](crate::RefreshToken) and a [`TokenError`](crate::TokenError);
/// tests use numbers.
pub(crate) trait Payload {
    /// What requests carry: the `Authorization` header value.
    type Access: Clone + PartialEq;
    /// A refresh token, given back to the driver when a grant is started.
    type Refresh: Clone;
    /// A failure, shared by every waiter that gets it.
    type Error: Clone;

    /// An error the core reports itself.
    fn error(why: Why) -> Self::Error;
}

/// Errors that no grant produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// A waiter's budget ran out before a grant had even failed.
    Budget,
    /// The cache was shut down.
    Closed,
    /// A grant's task was lost with its runtime before it answered.
    Lost,
    /// A grant answered with a token that had already expired.
    Expired,
    /// The API refused several new tokens in a row before accepting any: a
    /// grant would not help until the pause ends.
    Refused,
}

/// Identifies one grant attempt, so that a late answer of an aborted or lost
/// attempt is told apart from the one in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlightId(pub(crate) u64);

/// Identifies one registered waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WaiterId(pub(crate) u64);

/// Something that happened.
pub(crate) enum Event<P: Payload> {
    /// A caller needs a valid token (other than the token `not`) and waits
    /// until `deadline` at the latest.
    Need {
        waiter: WaiterId,
        deadline: Time,
        not: Option<u64>,
    },
    /// A caller saw the published token stale.
    Kick,
    /// A refresh is wanted now, however fresh the token (benches replace the
    /// token this way while requests run).
    Refresh,
    /// A caller wants a token newer than the current one (a forced refresh),
    /// and waits until `deadline` at the latest. A token younger than
    /// [`MIN_AGE_TO_FORCE`](super::MIN_AGE_TO_FORCE) counts as new.
    Forced { waiter: WaiterId, deadline: Time },
    /// The API refused a request carrying token `id` (a 401, or what the
    /// layer's refusal rule says); `waiter`, if any, wants the token to send
    /// the request again with.
    Refused {
        id: u64,
        waiter: Option<(WaiterId, Time)>,
    },
    /// The API answered a request carrying token `id` without refusing it:
    /// the token works, and a later refusal of it is a revocation.
    Accepted { id: u64 },
    /// A waiter went away before its answer.
    WaiterGone { waiter: WaiterId },
    /// A grant returned a token pair.
    Granted { flight: FlightId, grant: Granted<P> },
    /// A grant failed.
    GrantFailed {
        flight: FlightId,
        failure: Failure<P>,
    },
    /// A grant's task ended without an answer (its runtime shut down, or it
    /// could not be spawned).
    GrantLost { flight: FlightId },
    /// The deadline the driver was asked to arm has come.
    Tick,
    /// The timer is gone (its runtime shut down, or none could be armed).
    TimerLost,
    /// The credentials changed; `other_login` when the client id or the
    /// username did, which ends the session.
    CredentialsChanged { other_login: bool },
    /// The last handle on the cache went away.
    Close,
    /// A store call of flight `flight` answered.
    Stored {
        flight: FlightId,
        reply: StoreReply<P>,
    },
}

/// A record of the token store, as the core sees it: the driver turns its
/// wall-clock expiry into the core's time. A spent refresh token is absent.
#[cfg_attr(test, derive(Clone))]
pub(crate) struct Record<P: Payload> {
    pub(crate) version: u64,
    pub(crate) access: P::Access,
    pub(crate) refresh: Option<P::Refresh>,
    pub(crate) expires_at: Time,
    /// When its refresh token expires, if the endpoint said.
    pub(crate) refresh_until: Option<Time>,
    /// Its refresh token was marked spent: a holder is refreshing it, and its
    /// access token may be the one that was refused.
    pub(crate) spent: bool,
}

/// What a store call answered.
pub(crate) enum StoreReply<P: Payload> {
    /// The lease is ours.
    Leased,
    /// Another replica holds the lease, for at most this long.
    Held(Option<Duration>),
    /// The record read (`None`: there is none), or the new record a wait saw
    /// (`None`: the wait ended without one).
    Record(Option<Record<P>>),
    /// A write landed as this version.
    Written(u64),
    /// A write found another version; what is stored now, if readable.
    Conflict(Option<Record<P>>),
    /// A write found a record at this version that this replica cannot read
    /// (sealed under another key, damaged): a write that expects it replaces
    /// it.
    Unreadable(u64),
    /// The store did not answer (down, timed out, refused).
    Down,
}

/// A successful grant.
pub(crate) struct Granted<P: Payload> {
    pub(crate) access: P::Access,
    /// `None` when the answer held none: the one that was sent is kept.
    pub(crate) refresh: Option<P::Refresh>,
    pub(crate) lifetime: Duration,
    /// How long the refresh token lives, if the answer said
    /// (`refresh_expires_in`); counted from `sent_at` too.
    pub(crate) refresh_lifetime: Option<Duration>,
    /// When the grant request was sent: expiry counts from there.
    pub(crate) sent_at: Time,
    /// 0..1, for the refresh margin's jitter.
    pub(crate) jitter: f64,
}

/// A failed grant.
pub(crate) struct Failure<P: Payload> {
    pub(crate) error: P::Error,
    pub(crate) class: Class,
    /// A rotated refresh token from an answer that was otherwise unusable.
    pub(crate) rotated: Option<P::Refresh>,
    pub(crate) retry_after: Option<Duration>,
    /// 0..1, for the backoff's jitter.
    pub(crate) jitter: f64,
}

/// How a grant failed, as far as the ladder cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The endpoint refused the grant.
    Rejected,
    /// A failure before the request left: a refresh token it carried is good.
    Unsent,
    /// Any other failure: a refresh token it carried is spent.
    Sent,
}

/// The grant to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant<R> {
    Password,
    Refresh(R),
}

/// Why a grant starts; the refusal bound is checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Callers have no valid token.
    Demand,
    /// The token is inside its refresh margin.
    Stale,
    /// The API refused the current token: revoked if it had worked, refused
    /// on first use otherwise (the pause before such a grant grows with the
    /// streak of tokens refused on first use).
    Refusal,
    /// The previous step of the same ladder was refused: a refused refresh
    /// token, or a password refused after the credentials changed.
    Chained,
    /// The application asked for a new token ([`Event::Forced`]).
    Forced,
}

/// A refresh token and when it expires (`None`: the endpoint did not say, and
/// it is good until the endpoint refuses it).
#[derive(Clone)]
pub(crate) struct Kept<R> {
    pub(crate) token: R,
    pub(crate) until: Option<Time>,
}

impl<R> Kept<R> {
    /// Whether it may still be sent at `now`: a refresh token past its
    /// expiry is refused by the endpoint, so the password grant goes at once.
    pub(crate) fn usable_at(&self, now: Time) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// What the core tells the login's subscribers: how many tokens it has taken
/// (the newest token's id), where it stands, and the valid token's expiry and
/// source, in the public terms of [`LoginState`](crate::LoginState) but
/// for the core's time. No secret in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Login {
    pub(crate) version: u64,
    pub(crate) status: LoginStatus,
    pub(crate) token: Option<(Time, TokenSource)>,
}

/// What the driver does.
pub(crate) enum Action<P: Payload> {
    /// Start a grant in a task of its own.
    Start {
        flight: FlightId,
        grant: Grant<P::Refresh>,
        reason: Reason,
    },
    /// Stop the grant in flight: its login was replaced.
    Abort { flight: FlightId },
    /// Replace what readers see.
    Publish(View<P>),
    /// Tell the login's subscribers (only when it changed).
    Login(Login),
    /// Answer these waiters, all alike.
    Answer {
        waiters: Vec<WaiterId>,
        answer: Answer<P>,
    },
    /// Wake the core with [`Event::Tick`] at this time (`None`: no need).
    Arm(Option<Time>),
    /// Call the token store for flight `flight`.
    Store {
        flight: FlightId,
        call: StoreCall<P>,
    },
}

/// A call of the token store.
#[cfg_attr(test, derive(Clone))]
pub(crate) enum StoreCall<P: Payload> {
    /// Take (or renew) this replica's lease.
    Lease,
    /// Read the record.
    Read,
    /// Wait for a record of another version than `since`, until `until`.
    Watch { since: Option<u64>, until: Time },
    /// Write `record` (of its version) again with its refresh token marked
    /// spent, before that token is sent.
    Spend { record: Record<P> },
    /// Write a new pair over version `expected`.
    Write {
        expected: Option<u64>,
        record: Record<P>,
    },
    /// Release the lease (if still ours); nothing answers.
    Release,
}

/// What a waiter gets.
pub(crate) enum Answer<P: Payload> {
    Token(Slot<P::Access>),
    Failed(P::Error),
    /// No token to send the request again with that could help (the API
    /// refuses every new token for now): its refusal goes back to the caller.
    NoReplay,
    /// The waiter's wake-up was lost with a runtime: ask again.
    Retry,
}

impl<P: Payload> Clone for Answer<P> {
    fn clone(&self) -> Self {
        match self {
            Self::Token(slot) => Self::Token(slot.clone()),
            Self::Failed(err) => Self::Failed(err.clone()),
            Self::NoReplay => Self::NoReplay,
            Self::Retry => Self::Retry,
        }
    }
}

/// A token as requests carry it: the header value, the id that tells tokens
/// apart when the API refuses one, and whether the API has accepted it yet
/// (until then, a request that carries it reports its answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot<A> {
    pub(crate) id: u64,
    pub(crate) access: A,
    pub(crate) accepted: bool,
}

/// What readers see, without a lock.
#[cfg_attr(test, derive(Clone))]
pub(crate) enum View<P: Payload> {
    /// A valid token.
    Token(Slot<P::Access>, Phase),
    /// No valid token: ask the core.
    Empty,
    /// No valid token, and asking would not help: a refused password, or the
    /// cache was shut down.
    Failed(P::Error),
}

impl<P: Payload> View<P> {
    /// The valid token, if any.
    pub(crate) fn slot(&self) -> Option<&Slot<P::Access>> {
        match self {
            Self::Token(slot, _) => Some(slot),
            Self::Empty | Self::Failed(_) => None,
        }
    }
}

/// How a reader treats a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Attach it.
    Fresh,
    /// Attach it, and tell the core ([`Event::Kick`]) so that a refresh starts.
    Stale,
    /// Attach it; a grant runs or waits for its next attempt.
    Refreshing,
    /// The timer that would retire it is gone: ask the core, which re-arms it.
    Unchecked,
}

/// The settings the core decides with.
#[derive(Debug, Clone)]
pub(crate) struct CacheConfig {
    pub(crate) refresh_margin: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) rejected_cooldown: Duration,
    /// How long a caller waits for a token at most.
    pub(crate) wait_budget: Duration,
    /// The pause before the grant that follows the third token in a row
    /// that the API refused on first use; it doubles with each further one,
    /// up to `backoff_max`. A revoked token (one that had worked) is
    /// refreshed at once.
    pub(crate) refusal_pause: Duration,
    /// Whether a token store is shared with other replicas: grants then
    /// follow the lease protocol.
    pub(crate) shared: bool,
    /// The lease's time to live. Below the wait budget by default, so that a
    /// holder that died costs the others' callers a delay, not a failure.
    pub(crate) lease_ttl: Duration,
    /// How long the driver lets a fetcher take over one grant before it
    /// counts the grant failed (after it may have been sent).
    pub(crate) grant_timeout: Duration,
    /// How long the driver lets one store call take (past a wait for a
    /// change) before it counts the store down.
    pub(crate) store_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(60),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            rejected_cooldown: Duration::from_secs(300),
            wait_budget: Duration::from_secs(10),
            refusal_pause: Duration::from_secs(1),
            shared: false,
            lease_ttl: Duration::from_secs(5),
            grant_timeout: Duration::from_secs(60),
            store_timeout: Duration::from_secs(2),
        }
    }
}
