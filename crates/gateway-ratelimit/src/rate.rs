//! Rates (`100/s`) and calendar quotas (`1000/day`), named so that they cannot be misread.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

/// A sustained rate: `count` requests per `period`, written `100/s`, `5000/min`, `10/h`, `2/day`.
///
/// `100/s` means one hundred requests per second, never one request every hundred seconds. The
/// period may carry a multiplier (`30/10s` is thirty requests per ten seconds). Internally a rate
/// becomes an emission interval of `period / count` in whole microseconds, rounded up, so the
/// enforced rate never exceeds the written one. The rate is exact when the interval is a whole
/// number of microseconds (`100/s`, `1000/s`, `5000/min`); otherwise it is low by less than
/// 1 µs per interval (2 ppm for `3/s`, 0.03% for `3000/s`).
///
/// ```
/// use gateway_ratelimit::Rate;
/// use std::time::Duration;
///
/// let rate: Rate = "5000/min".parse().unwrap();
/// assert_eq!(rate.count(), 5000);
/// assert_eq!(rate.period(), Duration::from_secs(60));
/// assert_eq!(rate.to_string(), "5000/min");
/// assert!("100 per second".parse::<Rate>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u64,
    period: Duration,
}

impl Rate {
    /// `count` requests per `period`. Panics if `count` is zero or `period` is shorter than a
    /// microsecond; use [`str::parse`] for input from users.
    pub fn new(count: u64, period: Duration) -> Self {
        assert!(count > 0, "a rate needs a positive count");
        assert!(
            period >= Duration::from_micros(1),
            "a rate needs a period of at least 1µs"
        );
        Self { count, period }
    }

    /// `count` requests per second.
    pub fn per_second(count: u64) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u64) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub fn per_hour(count: u64) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// Requests per period.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Microseconds between two requests at this rate, rounded up, at least 1.
    pub fn emission_interval_micros(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        period.div_ceil(self.count).max(1)
    }

    /// Requests per second, for sizing (hybrid leases, documentation).
    pub fn per_second_f64(&self) -> f64 {
        self.count as f64 / self.period.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let whole = self.period.subsec_nanos() == 0;
        let (n, unit) = match secs {
            _ if !whole => return write!(f, "{}/{}ms", self.count, self.period.as_millis()),
            86400 => (1, "day"),
            3600 => (1, "h"),
            60 => (1, "min"),
            1 => (1, "s"),
            s if s % 86400 == 0 => (s / 86400, "day"),
            s if s % 3600 == 0 => (s / 3600, "h"),
            s if s % 60 == 0 => (s / 60, "min"),
            s => (s, "s"),
        };
        if n == 1 {
            write!(f, "{}/{unit}", self.count)
        } else {
            write!(f, "{}/{n}{unit}", self.count)
        }
    }
}

/// Why a rate or quota did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseRateError(String);

impl fmt::Display for ParseRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseRateError {}

fn unit_duration(unit: &str) -> Option<Duration> {
    Some(match unit {
        "ms" => Duration::from_millis(1),
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        _ => return None,
    })
}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            ParseRateError(format!(
                "invalid rate `{s}`: expected COUNT/PERIOD such as `100/s`, `5000/min`, `30/10s`, `1000/h` or `2/day`"
            ))
        };
        let (count, period) = s.trim().split_once('/').ok_or_else(err)?;
        let count: u64 = count.trim().parse().map_err(|_| err())?;
        let period = period.trim();
        let split = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (mult, unit) = period.split_at(split);
        let mult: u32 = if mult.is_empty() {
            1
        } else {
            mult.parse().map_err(|_| err())?
        };
        let unit = unit_duration(unit).ok_or_else(err)?;
        if count == 0 || mult == 0 {
            return Err(ParseRateError(format!(
                "invalid rate `{s}`: count and period must be positive"
            )));
        }
        let period = unit.checked_mul(mult).ok_or_else(err)?;
        Ok(Self::new(count, period))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A calendar window for a [`Quota`], aligned to UTC boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaWindow {
    /// From minute to minute (`:00` seconds).
    Minute,
    /// From hour to hour.
    Hour,
    /// From 00:00 UTC to the next 00:00 UTC.
    Day,
    /// From the first of the month, 00:00 UTC, to the first of the next month.
    Month,
}

impl QuotaWindow {
    fn name(self) -> &'static str {
        match self {
            Self::Minute => "min",
            Self::Hour => "h",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The window holding `unix_micros`: its number (stable across processes) and its start and
    /// end in Unix microseconds.
    pub fn bounds(self, unix_micros: i64) -> (i64, i64, i64) {
        const MIN: i64 = 60_000_000;
        let fixed = |len: i64| {
            let n = unix_micros.div_euclid(len);
            (n, n * len, (n + 1) * len)
        };
        match self {
            Self::Minute => fixed(MIN),
            Self::Hour => fixed(60 * MIN),
            Self::Day => fixed(1440 * MIN),
            Self::Month => {
                let day = unix_micros.div_euclid(1440 * MIN);
                let (y, m, _) = civil_from_days(day);
                let start = days_from_civil(y, m, 1) * 1440 * MIN;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1) * 1440 * MIN;
                (y * 12 + i64::from(m) - 1, start, end)
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A quota: at most `limit` requests per calendar window (`1000/day`, `5000000/month`), counted
/// in fixed UTC-aligned windows, so every instance and every client agrees when it resets.
///
/// ```
/// use gateway_ratelimit::{Quota, QuotaWindow};
///
/// let quota: Quota = "1000/day".parse().unwrap();
/// assert_eq!((quota.limit(), quota.window()), (1000, QuotaWindow::Day));
/// assert!("1000/fortnight".parse::<Quota>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    window: QuotaWindow,
}

impl Quota {
    /// The largest quota: 2^53 requests per window (counts stay exact in the Redis script).
    pub const MAX: u64 = 1 << 53;

    /// `limit` requests per `window`. Panics if `limit` is zero or above [`Quota::MAX`].
    pub fn new(limit: u64, window: QuotaWindow) -> Self {
        assert!(
            limit > 0 && limit <= Self::MAX,
            "a quota needs a limit from 1 to 2^53"
        );
        Self { limit, window }
    }

    /// `limit` requests per UTC day.
    pub fn per_day(limit: u64) -> Self {
        Self::new(limit, QuotaWindow::Day)
    }

    /// `limit` requests per UTC calendar month.
    pub fn per_month(limit: u64) -> Self {
        Self::new(limit, QuotaWindow::Month)
    }

    /// Requests per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> QuotaWindow {
        self.window
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.window.name())
    }
}

impl FromStr for Quota {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            ParseRateError(format!(
                "invalid quota `{s}`: expected COUNT/WINDOW with WINDOW one of min, h, day, month (e.g. `1000/day`)"
            ))
        };
        let (count, window) = s.trim().split_once('/').ok_or_else(err)?;
        let limit: u64 = count.trim().parse().map_err(|_| err())?;
        let window = match window.trim() {
            "m" | "min" | "minute" => QuotaWindow::Minute,
            "h" | "hour" => QuotaWindow::Hour,
            "d" | "day" => QuotaWindow::Day,
            "month" => QuotaWindow::Month,
            _ => return Err(err()),
        };
        if limit == 0 || limit > Self::MAX {
            return Err(ParseRateError(format!(
                "invalid quota `{s}`: the count must be from 1 to 2^53"
            )));
        }
        Ok(Self::new(limit, window))
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_mean_count_per_period() {
        for (text, count, secs) in [
            ("100/s", 100, 1),
            ("5000/min", 5000, 60),
            ("10/h", 10, 3600),
            ("2/day", 2, 86400),
            ("30/10s", 30, 10),
            (" 7 / 2m ", 7, 120),
        ] {
            let r: Rate = text.parse().unwrap();
            assert_eq!(
                (r.count(), r.period()),
                (count, Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(Rate::per_second(100).emission_interval_micros(), 10_000);
        // 3/s: 333333.33µs rounded up, so never more than 3 per second.
        assert_eq!(
            "3/s".parse::<Rate>().unwrap().emission_interval_micros(),
            333_334
        );
        for bad in [
            "",
            "100",
            "/s",
            "0/s",
            "100/0s",
            "100/fortnight",
            "-1/s",
            "1.5/s",
            "100/s/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_display_as_parsed() {
        for text in ["100/s", "5000/min", "10/h", "2/day", "30/10s", "5/250ms"] {
            assert_eq!(text.parse::<Rate>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn quota_windows_are_utc_calendar_aligned() {
        // 2026-11-26T15:30:00Z
        let t = 1_795_707_000_000_000_i64;
        let (_, start, end) = QuotaWindow::Day.bounds(t);
        assert_eq!(start, 1_795_651_200_000_000); // 2026-11-26T00:00:00Z
        assert_eq!(end - start, 86_400_000_000);
        let (n, start, end) = QuotaWindow::Month.bounds(t);
        assert_eq!(start, 1_793_491_200_000_000); // 2026-11-01T00:00:00Z
        assert_eq!(end, 1_796_083_200_000_000); // 2026-12-01T00:00:00Z
        let (n2, start2, _) = QuotaWindow::Month.bounds(end);
        assert_eq!((n2, start2), (n + 1, end));
        // A leap February has 29 days.
        let feb = days_from_civil(2028, 2, 10) * 86_400_000_000;
        let (_, s, e) = QuotaWindow::Month.bounds(feb);
        assert_eq!((e - s) / 86_400_000_000, 29);
        for d in [-800_000, -1, 0, 1, 59, 60, 365, 11_016, 20_000, 2_000_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
