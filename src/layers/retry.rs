//! The retry decision as one table: what failed (Google's answer read into a [`Verdict`], or the
//! connection) decides whether another attempt is made, whether the key is avoided, whether to
//! back off first, what is counted, which budget bounds it, and whether the request stays
//! counted when it is not tried again.

use crate::upstream::Verdict;

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure<'a> {
    /// Google answered with an error; its meaning for the key.
    Answer(&'a Verdict),
    /// No connection (TCP, TLS, refused): the request never left.
    Unsent,
    /// The connection failed after the request was written: Google may have run it.
    Lost,
    /// No answer head within the timeout: Google may be running it (the wait can include
    /// waiting for an HTTP/2 stream slot; then it never left, but cannot be told apart).
    Silent,
    /// A Vertex AI entry's credentials failed: no access token could be minted, or Google
    /// answered 401/403 with it. The entry is held; the request did not run.
    EntryRefused,
}

/// Which bound applies to the attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `upstream.max_attempts`.
    Attempts,
    /// `upstream.max_attempts` plus one try per pooled key: a 429 or a dead key takes that key
    /// out, so trying the others is bounded by the pool.
    AttemptsAndPool,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Whether another attempt may be made (within the budget and the deadline).
    pub retry: bool,
    /// Keep this key out of the next attempts while others remain.
    pub avoid_key: bool,
    /// Wait (exponential backoff with full jitter) before the next attempt.
    pub backoff: bool,
    /// `gqp_retries_total{reason}` when it is tried again.
    pub reason: &'static str,
    pub budget: Budget,
    /// When not tried again: the request stays counted, estimate included (it may have run).
    pub keep_counted: bool,
}

/// The table. `idempotent`: a read (`GET`, `HEAD`) that may be sent again even after it was
/// written.
pub fn plan(failure: Failure<'_>, idempotent: bool) -> Plan {
    let deliver = Plan {
        retry: false,
        avoid_key: false,
        backoff: false,
        reason: "",
        budget: Budget::Attempts,
        keep_counted: false,
    };
    match failure {
        Failure::Answer(Verdict::Deliver) => deliver,
        // The key's project (or the whole project, for a spend cap) is now held in the store:
        // admission skips it by itself.
        Failure::Answer(
            Verdict::QuotaExhausted { .. }
            | Verdict::RateLimited { .. }
            | Verdict::SpendCapped { .. },
        ) => Plan {
            retry: true,
            reason: "upstream_429",
            budget: Budget::AttemptsAndPool,
            ..deliver
        },
        Failure::Answer(Verdict::DeadKey { .. }) => Plan {
            retry: true,
            avoid_key: true,
            reason: "dead_key",
            budget: Budget::AttemptsAndPool,
            ..deliver
        },
        Failure::Answer(Verdict::Transient) => Plan {
            retry: true,
            avoid_key: true,
            backoff: true,
            reason: "upstream_5xx",
            ..deliver
        },
        // The entry is held in the store (the next admissions skip it): another key may serve.
        Failure::EntryRefused => Plan {
            retry: true,
            avoid_key: true,
            reason: "vertex_auth",
            budget: Budget::AttemptsAndPool,
            ..deliver
        },
        Failure::Unsent => Plan {
            retry: true,
            avoid_key: true,
            backoff: true,
            reason: "network",
            ..deliver
        },
        Failure::Lost | Failure::Silent => Plan {
            retry: idempotent,
            avoid_key: true,
            backoff: true,
            reason: "network",
            keep_counted: true,
            ..deliver
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_row_by_row() {
        let quota = Verdict::QuotaExhausted {
            cooldown_ms: 1000,
            kinds: vec![],
            reported: vec![],
        };
        let bare = Verdict::RateLimited {
            retry_delay_ms: None,
        };
        let dead = Verdict::DeadKey { reason: "x".into() };
        let spend = Verdict::SpendCapped {
            retry_delay_ms: None,
            named: "MonthlySpendCap".into(),
        };
        // (failure, idempotent) -> (retry, avoid, backoff, reason, budget, keep counted)
        type Expect = (bool, bool, bool, &'static str, Budget, bool);
        let rows: [(Failure, bool, Expect); 11] = [
            (
                Failure::EntryRefused,
                false,
                (
                    true,
                    true,
                    false,
                    "vertex_auth",
                    Budget::AttemptsAndPool,
                    false,
                ),
            ),
            (
                Failure::Answer(&spend),
                false,
                (
                    true,
                    false,
                    false,
                    "upstream_429",
                    Budget::AttemptsAndPool,
                    false,
                ),
            ),
            (
                Failure::Answer(&Verdict::Deliver),
                false,
                (false, false, false, "", Budget::Attempts, false),
            ),
            (
                Failure::Answer(&quota),
                false,
                (
                    true,
                    false,
                    false,
                    "upstream_429",
                    Budget::AttemptsAndPool,
                    false,
                ),
            ),
            (
                Failure::Answer(&bare),
                false,
                (
                    true,
                    false,
                    false,
                    "upstream_429",
                    Budget::AttemptsAndPool,
                    false,
                ),
            ),
            (
                Failure::Answer(&dead),
                false,
                (
                    true,
                    true,
                    false,
                    "dead_key",
                    Budget::AttemptsAndPool,
                    false,
                ),
            ),
            (
                Failure::Answer(&Verdict::Transient),
                false,
                (true, true, true, "upstream_5xx", Budget::Attempts, false),
            ),
            (
                Failure::Unsent,
                false,
                (true, true, true, "network", Budget::Attempts, false),
            ),
            (
                Failure::Lost,
                false,
                (false, true, true, "network", Budget::Attempts, true),
            ),
            (
                Failure::Lost,
                true,
                (true, true, true, "network", Budget::Attempts, true),
            ),
            (
                Failure::Silent,
                false,
                (false, true, true, "network", Budget::Attempts, true),
            ),
        ];
        for (failure, idempotent, (retry, avoid_key, backoff, reason, budget, keep_counted)) in rows
        {
            assert_eq!(
                plan(failure, idempotent),
                Plan {
                    retry,
                    avoid_key,
                    backoff,
                    reason,
                    budget,
                    keep_counted
                },
                "{failure:?} idempotent={idempotent}"
            );
        }
    }
}
