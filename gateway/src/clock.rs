//! The one clock of the gateway and the one way its times are written and
//! read: epoch seconds in the store, RFC 3339 (UTC) towards Graph, Graph's
//! date-times read back to epoch seconds or milliseconds (jiff does the
//! calendar arithmetic).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (the store's clock unit).
pub type Epoch = i64;

pub fn now() -> Epoch {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC, to the second (what Graph takes for `expirationDateTime`).
pub fn rfc3339(at: SystemTime) -> String {
    match jiff::Timestamp::try_from(at) {
        Ok(t) => t.round(jiff::Unit::Second).map_or_else(
            |_| "1970-01-01T00:00:00Z".to_owned(),
            |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        ),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

/// Seconds since the epoch of one of Graph's date-times (RFC 3339, e.g.
/// `2026-11-25T13:43:37.123Z`; without an offset, UTC); 0 for what does not parse.
pub fn epoch_of(stamp: &str) -> i64 {
    epoch_millis_of(stamp).div_euclid(1000)
}

/// The same in milliseconds (Graph orders a chat's messages to the millisecond).
pub fn epoch_millis_of(stamp: &str) -> i64 {
    timestamp_of(stamp).map_or(0, |t| t.as_millisecond())
}

/// One of Graph's date-times (RFC 3339; without an offset, UTC).
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
        // Written to the second, read back to the same second.
        let at = UNIX_EPOCH + Duration::from_millis(1_798_761_599_400);
        assert_eq!(epoch_of(&rfc3339(at)), 1_798_761_599);
    }

    #[test]
    fn graph_timestamps() {
        assert_eq!(epoch_of("1970-01-01T00:00:00Z"), 0);
        assert_eq!(epoch_of("2026-12-31T23:59:59.123Z"), 1_798_761_599);
        assert_eq!(epoch_of("2000-02-29T00:00:00Z"), 951_782_400);
        assert_eq!(epoch_millis_of("2000-02-29T00:00:00.5Z"), 951_782_400_500);
        assert_eq!(
            epoch_millis_of("2000-02-29T00:00:00.1234567Z"),
            951_782_400_123
        );
        assert_eq!(epoch_millis_of("2000-02-29T00:00:00"), 951_782_400_000);
        assert_eq!(
            epoch_millis_of("2000-02-29T01:00:00+01:00"),
            951_782_400_000
        );
        assert_eq!(epoch_of("not a date"), 0);
    }
}
