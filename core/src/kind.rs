//! Kinds of client transaction (SPEC §2): a leaf module, so that events and policies can both
//! name them without importing each other.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The kinds of client transaction. Compensations are not client kinds: see [`CompKind`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Money in (+).
    Deposit,
    /// Money out to a merchant (−). Reversible by default.
    Purchase,
    /// Money out to the account holder (−).
    Withdrawal,
    /// Money back from a merchant (+). Not the same thing as a reversal.
    Refund,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 4] = [
        Kind::Deposit,
        Kind::Purchase,
        Kind::Withdrawal,
        Kind::Refund,
    ];

    /// True for kinds that take money out.
    pub fn is_debit(self) -> bool {
        matches!(self, Kind::Purchase | Kind::Withdrawal)
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Purchase => "purchase",
            Kind::Withdrawal => "withdrawal",
            Kind::Refund => "refund",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The signed effect of `amount` of this kind on a balance.
    pub fn signed(self, amount: Decimal) -> Decimal {
        if self.is_debit() {
            -amount
        } else {
            amount
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
