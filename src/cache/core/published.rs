//! What the core tells the outside after each event: the next deadline the
//! driver's timer must wake it at, and the view readers load without a lock
//! (published only when it changes).

use super::{Action, Core, Flight, Payload, Phase, Published, Time, View, Why};

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
