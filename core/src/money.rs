//! Currencies and exact amounts (SPEC §2).
//!
//! An [`Amount`] is a positive `rust_decimal::Decimal` whose scale never exceeds the minor units
//! of its [`Currency`]. Signs come from the event kind, never from the amount itself.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Largest amount a single event may carry, in major units (one trillion).
pub const AMOUNT_MAX_UNITS: i64 = 1_000_000_000_000;

/// ISO-4217 currencies this build knows, with their minor units.
///
/// The table is part of the protocol: every region must agree on it, so it is a constant.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// The table entry of a code: a binary search, the table being sorted by code (a test checks
/// it). O(log n) rather than a scan: the fold and validation ask for minor units per event.
fn lookup(code: &[u8]) -> Option<&'static (&'static str, u8)> {
    // Codes are compared as integers (big-endian, so in byte order): no `memcmp` per step.
    let num = |b: &[u8]| -> Option<u32> {
        match *b {
            [x, y, z] => Some(u32::from_be_bytes([0, x, y, z])),
            _ => None,
        }
    };
    let want = num(code)?;
    CURRENCIES
        .binary_search_by(|(c, _)| num(c.as_bytes()).unwrap_or(0).cmp(&want))
        .ok()
        .and_then(|i| CURRENCIES.get(i))
}

/// Errors about amounts and currencies. These are caller or peer mistakes, never bugs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// The currency is not a known ISO-4217 code.
    #[error("unknown currency {0:?}: expected an ISO-4217 code such as USD, EUR, JPY")]
    UnknownCurrency(String),
    /// The text is not a decimal number.
    #[error("amount {0:?} is not a decimal number")]
    Malformed(String),
    /// Zero or negative.
    #[error("amount must be greater than zero, got {0}")]
    NotPositive(String),
    /// More decimal places than the currency has minor units.
    #[error("amount {amount} has {scale} decimal places but {currency} allows at most {max}")]
    ScaleExceeded {
        /// The amount as given.
        amount: String,
        /// Its scale.
        scale: u32,
        /// The currency.
        currency: Currency,
        /// The currency's minor units.
        max: u32,
    },
    /// Larger than [`AMOUNT_MAX_UNITS`].
    #[error("amount {0} exceeds the per-transaction limit of {AMOUNT_MAX_UNITS}")]
    OverLimit(String),
}

/// An ISO-4217 currency code, three upper-case ASCII letters, known to this build.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

// Byte-wise order, as a derive would give, compared as one integer rather than by `memcmp`.
impl Ord for Currency {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let n = |c: &[u8; 3]| u32::from_be_bytes([c[0], c[1], c[2], 0]);
        n(&self.0).cmp(&n(&other.0))
    }
}
impl PartialOrd for Currency {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Currency {
    /// US dollar.
    pub const USD: Currency = Currency(*b"USD");
    /// Euro.
    pub const EUR: Currency = Currency(*b"EUR");
    /// Japanese yen (no minor units).
    pub const JPY: Currency = Currency(*b"JPY");
    /// Bahraini dinar (three minor units).
    pub const BHD: Currency = Currency(*b"BHD");

    /// Parses and checks a currency code.
    pub fn parse(code: &str) -> Result<Currency, AmountError> {
        lookup(code.as_bytes())
            .map(|(c, _)| {
                let b = c.as_bytes();
                Currency([b[0], b[1], b[2]])
            })
            .ok_or_else(|| AmountError::UnknownCurrency(code.to_string()))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Constructed only from the ASCII table above (or checked on decode).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Number of minor units (decimal places) of this currency.
    pub fn minor_units(&self) -> u32 {
        // The table's exceptions to 2, as a match (a test checks it against the table): the
        // fold and validation ask per event.
        match &self.0 {
            b"BHD" | b"JOD" | b"KWD" | b"OMR" | b"TND" => 3,
            b"CLP" | b"ISK" | b"JPY" | b"KRW" | b"VND" => 0,
            _ => 2,
        }
    }

    /// True if the code is in this build's table (used when decoding untrusted bytes).
    pub fn is_known(&self) -> bool {
        lookup(&self.0).is_some()
    }

    /// Renders a signed decimal with exactly this currency's minor units (`100.00` USD,
    /// `100` JPY), so every region prints the same bytes.
    pub fn render(&self, value: Decimal) -> String {
        let mut v = value;
        v.rescale(self.minor_units());
        v.to_string()
    }

    /// Rounds half away from zero to this currency's minor units.
    pub fn round(&self, value: Decimal) -> Decimal {
        value.round_dp_with_strategy(
            self.minor_units(),
            rust_decimal::RoundingStrategy::MidpointAwayFromZero,
        )
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

/// A strictly positive amount in a currency, scale-checked.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Amount(Decimal);

impl Amount {
    /// Parses a decimal string for `currency`, enforcing positivity, scale and the limit.
    pub fn parse(text: &str, currency: Currency) -> Result<Amount, AmountError> {
        let t = text.trim();
        if t.is_empty()
            || t != text
            || t.contains(['e', 'E', '_'])
            || t.starts_with('+')
            || t.starts_with('.')
            || t.ends_with('.')
        {
            return Err(AmountError::Malformed(text.to_string()));
        }
        let d = Decimal::from_str_exact(t).map_err(|_| AmountError::Malformed(text.to_string()))?;
        Amount::new(d, currency).map_err(|e| match e {
            AmountError::ScaleExceeded {
                scale,
                currency,
                max,
                ..
            } => AmountError::ScaleExceeded {
                amount: text.to_string(),
                scale,
                currency,
                max,
            },
            other => other,
        })
    }

    /// Checks a decimal for `currency`.
    pub fn new(d: Decimal, currency: Currency) -> Result<Amount, AmountError> {
        if d <= Decimal::ZERO {
            return Err(AmountError::NotPositive(d.to_string()));
        }
        let normalized = d.normalize();
        let max = currency.minor_units();
        if normalized.scale() > max {
            return Err(AmountError::ScaleExceeded {
                amount: d.to_string(),
                scale: normalized.scale(),
                currency,
                max,
            });
        }
        if normalized > Decimal::from(AMOUNT_MAX_UNITS) {
            return Err(AmountError::OverLimit(d.to_string()));
        }
        let mut v = normalized;
        v.rescale(max);
        Ok(Amount(v))
    }

    /// The value.
    pub fn value(&self) -> Decimal {
        self.0
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_with_minor_units() {
        let a = Amount::parse("100", Currency::USD).unwrap();
        assert_eq!(Currency::USD.render(a.value()), "100.00");
        let j = Amount::parse("100", Currency::JPY).unwrap();
        assert_eq!(Currency::JPY.render(j.value()), "100");
        let b = Amount::parse("1.234", Currency::BHD).unwrap();
        assert_eq!(Currency::BHD.render(b.value()), "1.234");
        // Trailing zeros beyond the scale are fine: 1.500 USD is 1.50.
        assert_eq!(
            Amount::parse("1.500", Currency::USD).unwrap().to_string(),
            "1.50"
        );
    }

    #[test]
    fn rejects_bad_amounts() {
        use AmountError::*;
        assert!(matches!(
            Amount::parse("0", Currency::USD),
            Err(NotPositive(_))
        ));
        assert!(matches!(
            Amount::parse("-1", Currency::USD),
            Err(NotPositive(_))
        ));
        assert!(matches!(
            Amount::parse("1.001", Currency::USD),
            Err(ScaleExceeded { max: 2, .. })
        ));
        assert!(matches!(
            Amount::parse("1.5", Currency::JPY),
            Err(ScaleExceeded { max: 0, .. })
        ));
        assert!(matches!(
            Amount::parse("1.0001", Currency::BHD),
            Err(ScaleExceeded { max: 3, .. })
        ));
        for bad in [
            "", "abc", "1e5", " 1", "1 ", "+1", ".5", "5.", "1_000", "0x10", "NaN",
        ] {
            assert!(
                matches!(Amount::parse(bad, Currency::USD), Err(Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Amount::parse("1000000000000.01", Currency::USD),
            Err(OverLimit(_))
        ));
        assert!(Amount::parse("1000000000000", Currency::USD).is_ok());
        assert!(matches!(
            Amount::parse("99999999999999999999999999999999", Currency::USD),
            Err(Malformed(_)) | Err(OverLimit(_))
        ));
    }

    #[test]
    fn currency_table_is_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(Currency(*b"XXX").minor_units(), 2);
        for (c, m) in CURRENCIES {
            let cur = Currency::parse(c).unwrap();
            assert_eq!(cur.minor_units(), u32::from(*m));
            assert!(cur.is_known());
        }
    }

    #[test]
    fn currency_codes() {
        assert_eq!(Currency::parse("USD").unwrap(), Currency::USD);
        assert!(matches!(
            Currency::parse("usd"),
            Err(AmountError::UnknownCurrency(_))
        ));
        assert!(matches!(
            Currency::parse("XXX"),
            Err(AmountError::UnknownCurrency(_))
        ));
        assert_eq!(Currency::JPY.minor_units(), 0);
        assert_eq!(Currency::BHD.minor_units(), 3);
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let d = Decimal::from_str_exact("0.125").unwrap();
        assert_eq!(Currency::USD.round(d).to_string(), "0.13");
        assert_eq!(Currency::USD.round(-d).to_string(), "-0.13");
        let d = Decimal::from_str_exact("0.124").unwrap();
        assert_eq!(Currency::USD.round(d).to_string(), "0.12");
    }
}
