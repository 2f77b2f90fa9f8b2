//! The fleet model checked exhaustively: every sequence of ops to a stated
//! depth, from a cold start, from a stale stored record and from a refresh
//! grant in flight, with the safety checks of `fleet.rs` at every step and
//! its liveness check at every leaf.

use super::fleet::{Op, REPLICAS, World, apply, mid_refresh, recovers};

/// Every sequence of `depth` ops from `alphabet`, from `w`: the safety checks
/// run at every step (they panic), liveness at every leaf. Returns the number
/// of states visited.
fn explore(w: &World, alphabet: &[Op], depth: usize) -> u64 {
    if depth == 0 {
        recovers(w.clone()).unwrap();
        return 1;
    }
    let mut states = 1;
    for op in alphabet {
        let mut next = w.clone();
        apply(&mut next, op);
        states += explore(&next, alphabet, depth - 1);
    }
    states
}

/// The depth the exhaustive check explores, `FLEET_DEPTH` to go deeper.
fn depth() -> usize {
    std::env::var("FLEET_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(4)
}

#[test]
fn every_fleet_interleaving_to_the_stated_depth_is_safe_and_recovers() {
    let mut alphabet = Vec::new();
    for r in 0..REPLICAS {
        alphabet.push(Op::Need(r));
        alphabet.push(Op::Complete {
            r,
            pick: 0,
            fail: false,
        });
        alphabet.push(Op::Complete {
            r,
            pick: 0,
            fail: true,
        });
        alphabet.push(Op::Kill(r));
        alphabet.push(Op::Refused(r));
    }
    alphabet.extend([
        Op::Advance(1_000),
        Op::Advance(31_000),
        Op::Store(false),
        Op::Store(true),
        Op::Rotate,
        Op::Freeze(true),
        Op::Failover,
    ]);
    // From a cold start, from a start where replica 0 holds the record and its
    // token has gone stale, and from one where it has sent the refresh token
    // (a failover then may lose the spend mark).
    let cold = World::new();
    // Replica 0 logs in and stores the pair (lease, read, grant, write,
    // release), and its token goes stale.
    let mut warm = World::new();
    apply(&mut warm, &Op::Need(0));
    let answer = Op::Complete {
        r: 0,
        pick: 0,
        fail: false,
    };
    for _ in 0..5 {
        apply(&mut warm, &answer);
    }
    apply(&mut warm, &Op::Advance(45_000));
    assert!(warm.record.is_some(), "the warm start has a stored record");
    let depth = depth();
    let refreshing = mid_refresh(true);
    let states = explore(&cold, &alphabet, depth)
        + explore(&warm, &alphabet, depth)
        + explore(&refreshing, &alphabet, depth);
    eprintln!(
        "fleet model: 3 replicas, {} ops, depth {depth}: {states} states",
        alphabet.len()
    );
    assert!(states > 1);
}
