//! Quota windows: fixed UTC calendar windows. Seconds, minutes, hours and days are
//! aligned on the Unix epoch (so a day starts at 00:00 UTC); a month starts at 00:00 UTC
//! on the 1st. Each window has a number that names it in storage.

use crate::clock::{civil_from_days, days_from_civil, days_in_month, NANOS_PER_SEC};
use crate::config::units::RateUnit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Seconds/minutes/hours/days since the epoch, or months since January 1970.
    pub id: u64,
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Seconds until the window ends, rounded up (what `RateLimit` `t=` says).
    pub fn secs_left(&self, now: u64) -> u64 {
        self.end.saturating_sub(now).div_ceil(NANOS_PER_SEC)
    }

    pub fn len_secs(&self) -> u64 {
        (self.end - self.start) / NANOS_PER_SEC
    }
}

/// The fixed length of a unit, in nanoseconds (`RateUnit::nanos`, which validation
/// uses too).
pub fn unit_nanos(unit: RateUnit) -> u64 {
    unit.nanos()
}

/// The window of `unit` that contains `now`.
pub fn window_at(unit: RateUnit, now: u64) -> Window {
    if unit != RateUnit::Month {
        let len = unit_nanos(unit);
        let id = now / len;
        return Window {
            id,
            start: id * len,
            end: (id + 1) * len,
        };
    }
    let day_ns = 86_400 * NANOS_PER_SEC;
    let days = (now / day_ns) as i64;
    let (y, m, _) = civil_from_days(days);
    let first = days_from_civil(y, m, 1) as u64;
    let start = first * day_ns;
    let end = start + u64::from(days_in_month(y, m)) * day_ns;
    let id = ((y - 1970) * 12) as u64 + u64::from(m - 1);
    Window { id, start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_instant;

    fn at(s: &str) -> u64 {
        parse_instant(s).unwrap()
    }

    #[test]
    fn days_reset_at_midnight_utc() {
        let w = window_at(RateUnit::Day, at("2030-01-01T23:59:59Z"));
        assert_eq!(w.end, at("2030-01-02T00:00:00Z"));
        assert_eq!(w.start, at("2030-01-01T00:00:00Z"));
        assert_eq!(w.secs_left(at("2030-01-01T23:59:00Z")), 60);
        let next = window_at(RateUnit::Day, at("2030-01-02T00:00:00Z"));
        assert_eq!(next.id, w.id + 1);
    }

    #[test]
    fn months_are_calendar_months() {
        let feb = window_at(RateUnit::Month, at("2024-02-29T23:00:00Z"));
        assert_eq!(feb.start, at("2024-02-01T00:00:00Z"));
        assert_eq!(feb.end, at("2024-03-01T00:00:00Z"));
        assert_eq!(feb.len_secs(), 29 * 86_400);
        let mar = window_at(RateUnit::Month, at("2024-03-01T00:00:00Z"));
        assert_eq!(mar.id, feb.id + 1);
        let dec = window_at(RateUnit::Month, at("2030-12-31T23:59:59Z"));
        let jan = window_at(RateUnit::Month, at("2031-01-01T00:00:00Z"));
        assert_eq!(jan.id, dec.id + 1);
        assert_eq!(dec.end, jan.start);
    }

    #[test]
    fn hours_and_minutes_align_on_the_epoch() {
        let w = window_at(RateUnit::Hour, at("2030-05-05T10:30:00Z"));
        assert_eq!(w.start, at("2030-05-05T10:00:00Z"));
        let m = window_at(RateUnit::Minute, at("2030-05-05T10:30:59Z"));
        assert_eq!(m.secs_left(at("2030-05-05T10:30:59Z")), 1);
    }
}
