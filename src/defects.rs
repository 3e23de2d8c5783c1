//! Deliberate defects for the chaos suite's detectability runs (issue 15, docs/testing.md).
//!
//! Compiled in only with the test-only cargo feature `chaos-defects` (never a default
//! feature): without it [`is`] is the constant `false` and every defect branch is dead code.
//! With it, the environment variable `WALLETD_CHAOS_DEFECT` names at most one defect, read
//! once at the first check. Each defect breaks one guarantee a fault kind tests, so a run of
//! `scripts/chaos.sh --defect NAME` must fail and name the check that caught it.

/// Environment variable naming the defect.
pub const DEFECT_ENV: &str = "WALLETD_CHAOS_DEFECT";
/// `spurious_503` answers every this many-th transaction with 503.
pub const SPURIOUS_503_EVERY: u64 = 40;
/// `drop_late_events` drops remote events older than this on arrival.
pub const LATE_EVENT_MS: u64 = 100;
/// `strict_clock` refuses remote HLCs more than this far ahead (in the chaos configs, whose
/// bound is 3 s: it shifts the local time it merges at back by the difference).
pub const STRICT_SKEW_MS: u64 = 300;
/// `ack_before_fsync` holds each write batch this long after acknowledging it.
pub const ACK_BEFORE_FSYNC_DELAY_MS: u64 = 300;

/// The deliberate defects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Defect {
    /// Answer 201 before the write batch is durable, and hold the batch a while (kill -9
    /// then loses acknowledged events: `no_lost_ack`).
    AckBeforeFsync,
    /// Ignore every anti-entropy answer (events missed during a partition or a crash are
    /// never pulled back: `convergence`).
    DropPullAnswers,
    /// Answer 503 to one transaction in [`SPURIOUS_503_EVERY`] (`no_5xx_outside_downtime`).
    Spurious503,
    /// On a storage failure, acknowledge the waiting requests instead of 503 (a full disk
    /// then loses acknowledged events: `no_lost_ack`).
    AckOnStorageFailure,
    /// Merge remote messages as if the local clock were a day ahead, so no event is ever
    /// refused for clock skew (`clock_skew_refused`).
    IgnoreClockSkew,
    /// Refuse remote HLCs more than [`STRICT_SKEW_MS`] ahead, a tenth of the chaos configs'
    /// bound (`clock_within_bound_accepted`).
    StrictClock,
    /// Drop remote events older than [`LATE_EVENT_MS`] on arrival, live or pulled, as if the
    /// network were a LAN: fine without latency, a permanent loss with it (`convergence`).
    DropLateEvents,
    /// A storage error at start (damaged file, read-only file system) ends the process with
    /// exit 0 and no message, as if it had stopped cleanly (`storage_refused`,
    /// `corruption_refused`).
    QuietStorageErrors,
}

impl Defect {
    /// The name `WALLETD_CHAOS_DEFECT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Defect::AckBeforeFsync => "ack_before_fsync",
            Defect::DropPullAnswers => "drop_pull_answers",
            Defect::Spurious503 => "spurious_503",
            Defect::AckOnStorageFailure => "ack_on_storage_failure",
            Defect::IgnoreClockSkew => "ignore_clock_skew",
            Defect::StrictClock => "strict_clock",
            Defect::DropLateEvents => "drop_late_events",
            Defect::QuietStorageErrors => "quiet_storage_errors",
        }
    }

    /// Every defect.
    pub const ALL: [Defect; 8] = [
        Defect::AckBeforeFsync,
        Defect::DropPullAnswers,
        Defect::Spurious503,
        Defect::AckOnStorageFailure,
        Defect::IgnoreClockSkew,
        Defect::StrictClock,
        Defect::DropLateEvents,
        Defect::QuietStorageErrors,
    ];

    /// The defect named `s`.
    pub fn parse(s: &str) -> Option<Defect> {
        Defect::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// True when defect `d` is switched on (always false without the `chaos-defects` feature).
pub fn is(d: Defect) -> bool {
    #[cfg(feature = "chaos-defects")]
    {
        static ACTIVE: std::sync::OnceLock<Option<Defect>> = std::sync::OnceLock::new();
        let a = ACTIVE.get_or_init(|| {
            let d = std::env::var(DEFECT_ENV)
                .ok()
                .and_then(|s| Defect::parse(&s));
            if let Some(d) = d {
                tracing::warn!(defect = d.name(), "chaos defect switched on");
            }
            d
        });
        *a == Some(d)
    }
    #[cfg(not(feature = "chaos-defects"))]
    {
        let _ = d;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_is_on_by_default() {
        for d in Defect::ALL {
            assert_eq!(Defect::parse(d.name()), Some(d));
            if !cfg!(feature = "chaos-defects") {
                assert!(!is(d));
            }
        }
        assert_eq!(Defect::parse("nope"), None);
    }
}
