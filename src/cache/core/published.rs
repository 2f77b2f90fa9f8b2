//! What the core tells the outside after each event: the next deadline the
//! driver's timer must wake it at, the view readers load without a lock, and
//! the login's state for its subscribers (each told only when it changes).

use super::{Action, Core, Flight, Login, LoginStatus, Payload, Phase, Published, Time, View, Why};

impl<P: Payload> Core<P> {
    /// The next time something is due.
    fn next_deadline(&self) -> Option<Time> {
        let token = self.token.as_ref().map(|t| match t.stale {
            false => t.stale_at,
            true => t.expires_at,
        });
        let paused = match self.flight {
            Flight::Paused { until, .. } => Some(until),
            _ => None,
        };
        let rejected = self.rejected.as_ref().map(|r| r.until);
        let waiter = self.waiters.earliest();
        [token, paused, rejected, waiter]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn arm(&mut self, out: &mut Vec<Action<P>>) {
        let next = self.next_deadline();
        if next != self.armed {
            self.armed = next;
            out.push(Action::Arm(next));
        }
    }

    pub(super) fn publish(&mut self, out: &mut Vec<Action<P>>) {
        let (key, view) = self.view();
        if self.published != Some(key) {
            self.published = Some(key);
            out.push(Action::Publish(view));
        }
        let login = self.login();
        if self.told != Some(login) {
            self.told = Some(login);
            out.push(Action::Login(login));
        }
    }

    /// The login's state. What stops grants comes first: a token may still
    /// be valid while the password is refused or a refresh backs off, and
    /// its expiry says until when.
    fn login(&self) -> Login {
        let status = match &self.flight {
            _ if self.closed => LoginStatus::Closed,
            _ if self.rejected.is_some() => LoginStatus::Rejected,
            Flight::Paused { refusing: true, .. } => LoginStatus::Refused,
            Flight::Paused {
                refusing: false, ..
            } => LoginStatus::BackingOff,
            _ if self.token.is_some() => LoginStatus::LoggedIn,
            _ => LoginStatus::LoggedOut,
        };
        Login {
            // Token ids count from 1, one per token taken.
            version: self.next_token - 1,
            status,
            token: (self.token.as_ref()).map(|t| (t.expires_at, t.source)),
        }
    }

    fn view(&self) -> (Published, View<P>) {
        if self.closed {
            return (Published::Closed, View::Failed(P::error(Why::Closed)));
        }
        match (&self.token, &self.rejected) {
            (Some(token), _) => {
                let phase = if self.armed.is_none() {
                    Phase::Unchecked
                } else if !matches!(self.flight, Flight::Idle) {
                    Phase::Refreshing
                } else if token.stale && self.rejected.is_none() {
                    Phase::Stale
                } else {
                    Phase::Fresh
                };
                let view = View::Token(token.slot.clone(), phase);
                let key = Published::Token(token.slot.id, phase, token.slot.accepted);
                (key, view)
            }
            // Failing fast needs the timer that lifts the rejection; without it,
            // readers ask the core, which lifts it when its time has come.
            (None, Some(r)) if self.armed.is_some() => {
                (Published::Rejected(r.number), View::Failed(r.error.clone()))
            }
            // Likewise while the API refuses every new token.
            (None, None) if self.refusing() && self.armed.is_some() => {
                (Published::Refusing, View::Failed(P::error(Why::Refused)))
            }
            (None, _) => (Published::Empty, View::Empty),
        }
    }
}
