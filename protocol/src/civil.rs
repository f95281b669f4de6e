//! Calendar arithmetic for every wire format and report: a UTC date and time
//! to and from milliseconds since the Unix epoch. One place, on jiff, rather
//! than a day-count algorithm copied into each protocol.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// A date and time of day, to the second, at some UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i16,
    pub month: i8,
    pub day: i8,
    pub hour: i8,
    pub minute: i8,
    pub second: i8,
}

/// Milliseconds since the epoch of a UTC date and time; `None` when it is not
/// a real one (30 February, hour 24, second 60, a year jiff cannot hold).
pub fn utc_ms(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Option<i64> {
    at_offset_ms(year, month, day, hour, minute, second, 0)
}

/// The same for a date and time at a fixed offset east of UTC (seconds).
pub fn at_offset_ms(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    offset_secs: i32,
) -> Option<i64> {
    let dt = DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second).ok()?,
        0,
    )
    .ok()?;
    let offset = Offset::from_seconds(offset_secs).ok()?;
    Some(offset.to_timestamp(dt).ok()?.as_millisecond())
}

/// The UTC date and time (to the second, truncated) of an instant.
pub fn utc_of_ms(ms: i64) -> Option<Civil> {
    of_ms_at_offset(ms, 0)
}

/// The date and time of an instant at a fixed offset east of UTC (seconds).
pub fn of_ms_at_offset(ms: i64, offset_secs: i32) -> Option<Civil> {
    let ts = Timestamp::from_millisecond(ms).ok()?;
    let dt = Offset::from_seconds(offset_secs).ok()?.to_datetime(ts);
    Some(Civil {
        year: dt.year(),
        month: dt.month(),
        day: dt.day(),
        hour: dt.hour(),
        minute: dt.minute(),
        second: dt.second(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_both_ways() {
        assert_eq!(utc_ms(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(utc_ms(2000, 3, 1, 0, 0, 0), Some(11_017 * 86_400_000));
        assert_eq!(utc_ms(2026, 11, 1, 0, 0, 0), Some(1_793_491_200_000));
        assert_eq!(utc_ms(2024, 2, 29, 23, 59, 59), Some(1_709_251_199_000));
        assert_eq!(
            utc_of_ms(1_709_251_199_999),
            Some(Civil {
                year: 2024,
                month: 2,
                day: 29,
                hour: 23,
                minute: 59,
                second: 59
            })
        );
        // 2026-11-30T16:00:00Z is 1 December in Guangzhou (UTC+8).
        let ms = utc_ms(2026, 11, 30, 16, 0, 0).unwrap();
        let cst = of_ms_at_offset(ms, 8 * 3600).unwrap();
        assert_eq!((cst.month, cst.day, cst.hour), (12, 1, 0));
        assert_eq!(at_offset_ms(2026, 12, 1, 0, 0, 0, 8 * 3600), Some(ms));
    }

    #[test]
    fn what_is_not_a_date_is_refused() {
        for (y, m, d, h, mi, s) in [
            (2025, 2, 29, 0, 0, 0),
            (2024, 2, 30, 0, 0, 0),
            (2024, 13, 1, 0, 0, 0),
            (2024, 0, 1, 0, 0, 0),
            (2024, 4, 31, 0, 0, 0),
            (2024, 1, 0, 0, 0, 0),
            (2024, 1, 1, 24, 0, 0),
            (2024, 1, 1, 0, 60, 0),
            (2024, 1, 1, 0, 0, 60),
            (2024, 1, 1, -1, 0, 0),
            (100_000, 1, 1, 0, 0, 0),
        ] {
            assert_eq!(utc_ms(y, m, d, h, mi, s), None, "{y}-{m}-{d} {h}:{mi}:{s}");
        }
        assert_eq!(
            utc_ms(2000, 2, 29, 0, 0, 0),
            Some(951_782_400_000),
            "2000 is a leap year"
        );
        assert_eq!(utc_ms(1900, 2, 29, 0, 0, 0), None, "1900 is not");
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let mut ms = utc_ms(1970, 1, 1, 12, 0, 0).unwrap();
        for _ in 0..(400 * 366) {
            let c = utc_of_ms(ms).unwrap();
            let back = utc_ms(
                c.year.into(),
                c.month.into(),
                c.day.into(),
                c.hour.into(),
                c.minute.into(),
                c.second.into(),
            );
            assert_eq!(back, Some(ms), "{c:?}");
            ms += 86_400_000;
        }
    }
}
