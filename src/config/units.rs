//! Value types of the file format: durations, sizes and rates, all written as strings
//! (`250ms`, `8MiB`, `50/s`). Each parses with a message that names what was expected,
//! so the loader can attach the YAML path.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Why a duration, size or rate did not parse. `Display` is the message the loader
/// attaches to the YAML path (it names what was expected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitError {
    pub kind: UnitKind,
    pub input: String,
    pub problem: UnitProblem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    Duration,
    Size,
    Rate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitProblem {
    /// A duration without a unit.
    MissingUnit,
    /// The number part does not parse.
    NotANumber,
    /// A rate's count (the text given) is not a whole number.
    NotWholeNumber(String),
    UnknownUnit(String),
    OutOfRange,
    /// A rate without `/`.
    NotARate,
    /// A rate of 0 per unit.
    ZeroCount,
}

impl UnitError {
    fn new(kind: UnitKind, input: &str, problem: UnitProblem) -> UnitError {
        UnitError {
            kind,
            input: input.to_string(),
            problem,
        }
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use UnitKind::*;
        use UnitProblem::*;
        let what = match self.kind {
            Duration => "duration",
            Size => "size",
            Rate => "rate",
        };
        write!(f, "invalid {what} {:?}: ", self.input)?;
        match (&self.kind, &self.problem) {
            (_, MissingUnit) => f.write_str("missing unit (ms, s, m, h, d)"),
            (Duration, NotANumber) => f.write_str("expected a number then a unit"),
            (_, NotANumber) => f.write_str("expected e.g. 512KiB, 8MiB or a byte count"),
            (_, NotWholeNumber(n)) => write!(f, "{n:?} is not a whole number"),
            (Duration, UnknownUnit(u)) => write!(f, "unknown unit {u:?} (ms, s, m, h, d)"),
            (Size, UnknownUnit(u)) => write!(f, "unknown unit {u:?} (B, KiB, MiB, GiB)"),
            (Rate, UnknownUnit(u)) => write!(f, "unknown unit {u:?} (s, min, h, day, month)"),
            (Size, OutOfRange) => f.write_str("too large"),
            (_, OutOfRange) => f.write_str("out of range"),
            (_, NotARate) => f.write_str("expected N/UNIT, e.g. 50/s or 1000/day"),
            (_, ZeroCount) => f.write_str("the count must be at least 1"),
        }
    }
}

impl std::error::Error for UnitError {}

/// A duration written as `250ms`, `2s`, `5m`, `1h` or `1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let s = s.trim();
    let err = |p| UnitError::new(UnitKind::Duration, s, p);
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| err(UnitProblem::MissingUnit))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| err(UnitProblem::NotANumber))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1_000.0,
        "m" | "min" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        _ => return Err(err(UnitProblem::UnknownUnit(unit.to_string()))),
    };
    if !ms.is_finite() || !(0.0..=1e13).contains(&ms) {
        return Err(err(UnitProblem::OutOfRange));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A size in bytes, written as `512KiB`, `8MiB`, `1GiB` (also `KB`, `MB`, `GB` as powers of
/// ten) or as plain bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Size(pub u64);

pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let s = s.trim();
    let err = |p| UnitError::new(UnitKind::Size, s, p);
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err(UnitProblem::NotANumber))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(err(UnitProblem::UnknownUnit(u.to_string()))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| err(UnitProblem::OutOfRange))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 512KiB, 8MiB or a byte count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The window of a rate or quota. `Day` and `Month` are calendar windows in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

impl RateUnit {
    /// The fixed length of a unit, in nanoseconds (a month counts 30 days where a fixed
    /// length is needed: rates written per month).
    pub fn nanos(self) -> u64 {
        let secs = match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
            RateUnit::Day => 86_400,
            RateUnit::Month => 30 * 86_400,
        };
        secs * 1_000_000_000
    }
}

/// `N/UNIT`, where UNIT is `s`, `min`, `h`, `day` or `month`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub unit: RateUnit,
}

pub fn parse_rate(s: &str) -> Result<Rate, UnitError> {
    let err = |p| UnitError::new(UnitKind::Rate, s, p);
    let (n, u) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| err(UnitProblem::NotARate))?;
    let count: u64 = n
        .trim()
        .parse()
        .map_err(|_| err(UnitProblem::NotWholeNumber(n.to_string())))?;
    let unit = match u.trim() {
        "s" => RateUnit::Second,
        "min" => RateUnit::Minute,
        "h" => RateUnit::Hour,
        "day" => RateUnit::Day,
        "month" => RateUnit::Month,
        other => return Err(err(UnitProblem::UnknownUnit(other.to_string()))),
    };
    if count == 0 {
        return Err(err(UnitProblem::ZeroCount));
    }
    Ok(Rate { count, unit })
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_rate(&s).map_err(de::Error::custom)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = match self.unit {
            RateUnit::Second => "s",
            RateUnit::Minute => "min",
            RateUnit::Hour => "h",
            RateUnit::Day => "day",
            RateUnit::Month => "month",
        };
        write!(f, "{}/{}", self.count, u)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn rates() {
        let r = parse_rate("50/s").unwrap();
        assert_eq!((r.count, r.unit), (50, RateUnit::Second));
        assert_eq!(parse_rate("1000/day").unwrap().unit, RateUnit::Day);
        assert_eq!(parse_rate("7/month").unwrap().unit, RateUnit::Month);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/week").is_err());
        assert!(parse_rate("5").is_err());
    }
}
