//! The waiters' side of the driver: a caller asks the core for a token, gets
//! its answer at once or a ticket, and waits for the answer on a oneshot
//! channel; a caller that goes away unregisters, and one whose wake-up was lost
//! with a runtime asks again.

use std::sync::Arc;

use tokio::{sync::oneshot, time::Instant};

use super::{Live, MAX_ROUNDS, Shared};
use crate::{
    cache::core::{Answer, Event, Payload, Time, WaiterId, Why},
    error::{Kind, TokenError},
};

/// A registered waiter: its answer, or `None` when it must ask again. A
/// ticket dropped before its answer (a request future dropped before its
/// first poll) unregisters the waiter.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    pending: Option<(WaiterId, oneshot::Receiver<Answer<Live>>)>,
    deadline: Time,
    not: Option<u64>,
    /// A forced refresh: asking again forces it again.
    forced: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((waiter, _)) = self.pending.take() {
            drop(Gone {
                shared: &self.shared,
                waiter: Some(waiter),
            });
        }
    }
}

impl Shared {
    /// Asks for a valid token. With `refused`, the API answered 401 to token
    /// `refused`, and the answer is the token to replay with. The answer comes
    /// at once when the core has it; otherwise the ticket is for [`wait`](Self::wait).
    /// A caller without a refusal that gets a ticket counts as waiting.
    pub(crate) fn ask(self: &Arc<Self>, refused: Option<u64>) -> Result<Answer<Live>, Ticket> {
        let asked = self.ask_for(Want::Token { refused });
        if refused.is_none() && asked.is_err() {
            self.counters.waited();
        }
        asked
    }

    /// Asks for a valid token as [`ask`](Self::ask) does, for the
    /// application (its login, not a request: no request counts as waiting).
    pub(crate) fn ask_to_login(self: &Arc<Self>) -> Result<Answer<Live>, Ticket> {
        self.ask_for(Want::Token { refused: None })
    }

    /// Asks for a token newer than the current one (a forced refresh); a
    /// token too young to replace counts as one.
    pub(crate) fn ask_to_refresh(self: &Arc<Self>) -> Result<Answer<Live>, Ticket> {
        self.ask_for(Want::Newer)
    }

    fn ask_for(self: &Arc<Self>, want: Want) -> Result<Answer<Live>, Ticket> {
        if let Some(answer) = no_runtime() {
            return Ok(answer);
        }
        let deadline = self.time(Instant::now()).saturating_add(self.budget);
        let (waiter, rx) = self.register(|waiter| match want {
            Want::Token { refused: Some(id) } => Event::Refused {
                id,
                waiter: Some((waiter, deadline)),
            },
            Want::Token { refused: None } => Event::Need {
                waiter,
                deadline,
                not: None,
            },
            Want::Newer => Event::Forced { waiter, deadline },
        });
        let ticket = self.answer_or_ticket(waiter, rx, deadline, want.refused());
        ticket.map_err(|mut ticket| {
            ticket.forced = matches!(want, Want::Newer);
            ticket
        })
    }

    /// The API refused a request carrying token `id`. Whether the request is
    /// sent again depends on why, while `more` sends are allowed: a token
    /// replaced while the request was in flight (superseded), or one that
    /// had worked and was revoked, makes a resend; a refusal of a token that
    /// never worked is the request's one replay, allowed unless `replayed`
    /// names the token a replay was spent on already, and the API is not
    /// known to have accepted that one since (then it was a revocation, told
    /// late, and the replay is the request's again). Either way the cache
    /// learns of the refusal (and drops the token if it is current), under
    /// the same lock that decides.
    pub(crate) fn refused(self: &Arc<Self>, id: u64, replayed: Option<u64>, more: bool) -> Resend {
        if let Some(answer) = no_runtime() {
            return Resend::Send {
                replay: true,
                answer: Ok(answer),
            };
        }
        let now = self.time(Instant::now());
        let deadline = now.saturating_add(self.budget);
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let mut registered = None;
        self.run_with(|driver| {
            let resend = driver.core.resends(id, now);
            let send = more && (resend || replayed.is_none_or(|t| driver.core.worked(t)));
            let tx = tx.take().filter(|_| send);
            let Some(tx) = tx else {
                return Some(Event::Refused { id, waiter: None });
            };
            let waiter = WaiterId(driver.next_waiter);
            driver.next_waiter += 1;
            driver.waiters.insert(waiter, tx);
            registered = Some((waiter, !resend));
            Some(Event::Refused {
                id,
                waiter: Some((waiter, deadline)),
            })
        });
        match registered {
            None => Resend::No,
            Some((waiter, replay)) => Resend::Send {
                replay,
                answer: self.answer_or_ticket(waiter, rx, deadline, Some(id)),
            },
        }
    }

    /// The answer a registered waiter got at once, or its ticket.
    fn answer_or_ticket(
        self: &Arc<Self>,
        waiter: WaiterId,
        mut rx: oneshot::Receiver<Answer<Live>>,
        deadline: Time,
        not: Option<u64>,
    ) -> Result<Answer<Live>, Ticket> {
        let pending = match rx.try_recv() {
            Ok(Answer::Retry) => None,
            Ok(answer) => return Ok(answer),
            Err(_) => Some((waiter, rx)),
        };
        Err(Ticket {
            shared: Arc::clone(self),
            pending,
            deadline,
            not,
            forced: false,
        })
    }

    /// Waits for the answer of a ticket from [`ask`](Self::ask), asking again
    /// (a bounded number of times) when a wake-up was lost with a runtime.
    pub(crate) async fn wait(self: Arc<Self>, mut ticket: Ticket) -> Answer<Live> {
        for _ in 0..MAX_ROUNDS {
            let (waiter, rx) = match ticket.pending.take() {
                Some(pending) => pending,
                None if ticket.forced => self.register(|waiter| Event::Forced {
                    waiter,
                    deadline: ticket.deadline,
                }),
                None => self.register(|waiter| Event::Need {
                    waiter,
                    deadline: ticket.deadline,
                    not: ticket.not,
                }),
            };
            let mut gone = Gone {
                shared: &self,
                waiter: Some(waiter),
            };
            let answer = rx.await;
            gone.waiter = None;
            match answer {
                Ok(Answer::Retry) => {}
                Ok(answer) => return answer,
                Err(_) => return Answer::Failed(Live::error(Why::Closed)),
            }
        }
        Answer::Failed(Live::error(Why::Lost))
    }

    fn register(
        self: &Arc<Self>,
        event: impl FnOnce(WaiterId) -> Event<Live>,
    ) -> (WaiterId, oneshot::Receiver<Answer<Live>>) {
        let (tx, rx) = oneshot::channel();
        let mut id = WaiterId(0);
        self.run_with(|driver| {
            id = WaiterId(driver.next_waiter);
            driver.next_waiter += 1;
            driver.waiters.insert(id, tx);
            Some(event(id))
        });
        (id, rx)
    }
}

/// What a caller asks the cache for.
#[derive(Clone, Copy)]
enum Want {
    /// A valid token; with `refused`, other than that one, which the API
    /// refused.
    Token { refused: Option<u64> },
    /// A token newer than the current one.
    Newer,
}

impl Want {
    fn refused(self) -> Option<u64> {
        match self {
            Self::Token { refused } => refused,
            Self::Newer => None,
        }
    }
}

/// What a request refused by the API does next.
pub(crate) enum Resend {
    /// It is sent again with the token of `answer` (at once, or when the
    /// ticket's answer comes); `replay` when this is the request's one
    /// replay, not a resend after its token was replaced in flight or
    /// revoked after it worked.
    Send {
        replay: bool,
        answer: Result<Answer<Live>, Ticket>,
    },
    /// It is not sent again: its refusal goes back to the caller.
    No,
}

/// Without a tokio runtime no grant can run: the answer to give at once.
fn no_runtime() -> Option<Answer<Live>> {
    tokio::runtime::Handle::try_current().err().map(|_| {
        let err = TokenError::new(Kind::Closed).with_detail("no tokio runtime to run the grant");
        Answer::Failed(err)
    })
}

/// Unregisters a waiter whose caller went away before its answer.
struct Gone<'a> {
    shared: &'a Arc<Shared>,
    waiter: Option<WaiterId>,
}

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            self.shared.run_with(|driver| {
                driver.waiters.remove(&waiter);
                Some(Event::WaiterGone { waiter })
            });
        }
    }
}
