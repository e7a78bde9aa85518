//! The one clock of the gateway and the one way its times are written and
//! read: epoch seconds in the store, RFC 3339 (UTC) towards Graph, Graph's
//! date-times read as timestamps (jiff does the calendar arithmetic).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (the store's clock unit).
pub type Epoch = i64;

pub fn now() -> Epoch {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC, to the second, truncated (what Graph takes for
/// `expirationDateTime`); the epoch for a time before it.
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let t = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One of Graph's date-times (RFC 3339, e.g. `2026-11-25T13:43:37.123Z`;
/// without an offset, UTC); `None` for what does not parse.
pub fn timestamp_of(stamp: &str) -> Option<jiff::Timestamp> {
    stamp.parse::<jiff::Timestamp>().ok().or_else(|| {
        let civil = stamp.parse::<jiff::civil::DateTime>().ok()?;
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(stamp: &str) -> Option<i64> {
        timestamp_of(stamp).map(|t| t.as_second())
    }

    fn millis(stamp: &str) -> Option<i64> {
        timestamp_of(stamp).map(|t| t.as_millisecond())
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_798_761_599)),
            "2026-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        // Written to the second (truncated), read back to the same second.
        let at = UNIX_EPOCH + Duration::from_millis(1_798_761_599_900);
        assert_eq!(secs(&rfc3339(at)), Some(1_798_761_599));
    }

    #[test]
    fn graph_timestamps() {
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(secs("2026-12-31T23:59:59.123Z"), Some(1_798_761_599));
        assert_eq!(secs("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(millis("2000-02-29T00:00:00.5Z"), Some(951_782_400_500));
        assert_eq!(
            millis("2000-02-29T00:00:00.1234567Z"),
            Some(951_782_400_123)
        );
        assert_eq!(millis("2000-02-29T00:00:00"), Some(951_782_400_000));
        assert_eq!(millis("2000-02-29T01:00:00+01:00"), Some(951_782_400_000));
        assert_eq!(secs("not a date"), None);
    }
}
