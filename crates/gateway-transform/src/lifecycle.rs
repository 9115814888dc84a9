//! An API version's lifecycle (RFC 9745 `Deprecation`, RFC 8594 `Sunset`).
//!
//! While the version is served, every response carries `Deprecation: @<unix seconds>` (from
//! the deprecation date on, or announcing it before), `Sunset: <HTTP-date>` and
//! `Link: <successor>; rel="successor-version"`. From the sunset on, requests are answered by
//! the gateway: `410 Gone` with a problem body naming the successor, or a `308` redirect to it.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use gateway_transform::lifecycle::{AfterSunset, Lifecycle};
//!
//! let day = Duration::from_secs(86_400);
//! let lifecycle = Lifecycle {
//!     deprecated_at: Some(UNIX_EPOCH + 100 * day),
//!     sunset_at: Some(UNIX_EPOCH + 200 * day),
//!     successor: Some("https://api.example/v3/orders".into()),
//!     after_sunset: AfterSunset::Gone,
//! };
//! let mut res = http::Response::new(());
//! lifecycle.annotate(res.headers_mut());
//! assert_eq!(res.headers()["deprecation"], "@8640000");
//! assert_eq!(res.headers()["sunset"], "Mon, 20 Jul 1970 00:00:00 GMT");
//! assert!(lifecycle.refusal::<String>(UNIX_EPOCH + 150 * day).is_none());
//! let gone = lifecycle.refusal::<String>(UNIX_EPOCH + 200 * day).unwrap();
//! assert_eq!(gone.status(), 410);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// What happens after the sunset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AfterSunset {
    /// `410 Gone` with a problem body.
    #[default]
    Gone,
    /// `308 Permanent Redirect` to the successor.
    Redirect,
}

/// An API version's lifecycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// When the version is (or was) deprecated.
    pub deprecated_at: Option<SystemTime>,
    /// When it stops being served.
    pub sunset_at: Option<SystemTime>,
    /// The version that replaces it (a URL or an absolute path).
    pub successor: Option<String>,
    /// What happens after the sunset.
    pub after_sunset: AfterSunset,
}

impl Lifecycle {
    /// Adds the lifecycle headers to a response of this version.
    pub fn annotate(&self, headers: &mut HeaderMap) {
        if let Some(at) = self.deprecated_at {
            let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if let Ok(v) = HeaderValue::from_str(&format!("@{secs}")) {
                headers.insert("deprecation", v);
            }
        }
        if let Some(at) = self.sunset_at
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at))
        {
            headers.insert("sunset", v);
        }
        if let Some(next) = &self.successor
            && let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"successor-version\""))
        {
            headers.append(header::LINK, v);
        }
    }

    /// The gateway's own answer once the version is past its sunset at `now`.
    pub fn refusal<B: From<String>>(&self, now: SystemTime) -> Option<Response<B>> {
        let sunset = self.sunset_at?;
        if now < sunset {
            return None;
        }
        if self.after_sunset == AfterSunset::Redirect
            && let Some(next) = &self.successor
            && let Ok(location) = HeaderValue::from_str(next)
        {
            let mut res = Response::new(B::from(String::new()));
            *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
            res.headers_mut().insert(header::LOCATION, location);
            self.annotate(res.headers_mut());
            return Some(res);
        }
        let detail = match &self.successor {
            Some(next) => format!("this API version was retired; use {next}"),
            None => "this API version was retired".to_owned(),
        };
        let mut res: Response<B> = Problem::new(StatusCode::GONE)
            .detail(detail)
            .reason(RejectReason::Sunset, ResponseFlags::empty())
            .into_response();
        self.annotate(res.headers_mut());
        Some(res)
    }
}

/// Parses a lifecycle date: `2027-01-01` (midnight UTC), `2027-01-01T12:00:00Z`, or an HTTP-date.
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_date(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Ok(t);
    }
    let bad = || format!("`{s}`: expected 2027-01-01, 2027-01-01T12:00:00Z or an HTTP-date");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let mut ymd = date.split('-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) =
        (ymd.next(), ymd.next(), ymd.next(), ymd.next())
    else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return Err(bad());
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut hms = t.split(':').map(str::parse::<i64>);
            let (Some(Ok(h)), Some(Ok(mi)), Some(Ok(se)), None) =
                (hms.next(), hms.next(), hms.next(), hms.next())
            else {
                return Err(bad());
            };
            if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
                return Err(bad());
            }
            h * 3600 + mi * 60 + se
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + secs_of_day).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_every_accepted_form() {
        let day = |n: u64| UNIX_EPOCH + Duration::from_secs(n * 86_400);
        assert_eq!(parse_date("1970-01-01"), Ok(day(0)));
        assert_eq!(parse_date("2000-03-01"), Ok(day(11_017)));
        assert_eq!(
            parse_date("2027-01-01T12:30:15Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_798_806_615))
        );
        assert_eq!(
            parse_date("Fri, 01 Jan 2027 00:00:00 GMT"),
            parse_date("2027-01-01")
        );
        for bad in [
            "2027-13-01",
            "2027-01",
            "yesterday",
            "2027-01-01T25:00:00Z",
            "2027-01-01T12:00",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn after_the_sunset_a_redirect_when_asked_for_and_a_successor_exists() {
        let at = UNIX_EPOCH + Duration::from_secs(1000);
        let l = Lifecycle {
            sunset_at: Some(at),
            successor: Some("/v3/orders".into()),
            after_sunset: AfterSunset::Redirect,
            ..Lifecycle::default()
        };
        let res = l.refusal::<String>(at).unwrap();
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(res.headers()["location"], "/v3/orders");
        let gone = Lifecycle {
            successor: None,
            ..l
        }
        .refusal::<String>(at)
        .unwrap();
        assert_eq!(gone.status(), StatusCode::GONE, "nowhere to redirect to");
        assert_eq!(
            gone.extensions()
                .get::<gateway_core::Rejection>()
                .unwrap()
                .reason,
            RejectReason::Sunset
        );
    }
}
