//! Money helper shared by the single-region and the cluster tests.

/// Cents from a USD string like "12.34" or "-0.50".
pub fn cents(s: &str) -> i64 {
    let neg = s.starts_with('-');
    let t = s.trim_start_matches('-');
    let (a, b) = t.split_once('.').expect("two decimals");
    assert_eq!(b.len(), 2, "{s}");
    let v = a.parse::<i64>().expect("int") * 100 + b.parse::<i64>().expect("cents");
    if neg {
        -v
    } else {
        v
    }
}
