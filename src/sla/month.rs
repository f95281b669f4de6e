//! Calendar months in China Standard Time, the clock the city reports by.
//!
//! Stored times are UTC milliseconds; a report for "2026-11" covers
//! 2026-11-01 00:00 to 2026-12-01 00:00 in UTC+8. China has kept UTC+8 all
//! year since 1991, so a fixed offset is exact and needs no time-zone data.

use std::fmt;
use std::str::FromStr;

/// UTC+8, in milliseconds.
pub const CST_OFFSET_MS: i64 = 8 * 3600 * 1000;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a month as YYYY-MM (2000-01 to 2999-12)")]
pub struct BadMonth(pub String);

/// One calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    /// 1–12.
    month: u32,
}

impl Month {
    pub fn new(year: i32, month: u32) -> Result<Self, BadMonth> {
        if (2000..=2999).contains(&year) && (1..=12).contains(&month) {
            Ok(Self { year, month })
        } else {
            Err(BadMonth(format!("{year:04}-{month:02}")))
        }
    }

    /// The month (in China Standard Time) that contains `ms`.
    pub fn containing(ms: i64) -> Self {
        let (year, month, _) = civil_from_days((ms + CST_OFFSET_MS).div_euclid(DAY_MS));
        Self { year, month }
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// First millisecond of the month: its first day at 00:00 in UTC+8.
    pub fn start_ms(self) -> i64 {
        days_from_civil(self.year, self.month, 1) * DAY_MS - CST_OFFSET_MS
    }

    /// First millisecond after the month.
    pub fn end_ms(self) -> i64 {
        self.next().start_ms()
    }
}

impl FromStr for Month {
    type Err = BadMonth;

    fn from_str(s: &str) -> Result<Self, BadMonth> {
        let bad = || BadMonth(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        Month::new(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?).map_err(|_| bad())
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// `ms` as local time in UTC+8: `2026-11-30T23:59:59+08:00`.
pub fn format_cst(ms: i64) -> String {
    let local = ms + CST_OFFSET_MS;
    let (y, m, d) = civil_from_days(local.div_euclid(DAY_MS));
    let secs = local.rem_euclid(DAY_MS) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+08:00",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2026-11-01T00:00:00Z is 1_793_491_200 s after the epoch.
        assert_eq!(days_from_civil(2026, 11, 1) * 86_400, 1_793_491_200);
        for z in [-1, 0, 59, 60, 11_016, 20_000, 36_524, 400_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{z}");
        }
    }

    #[test]
    fn months_start_at_midnight_in_guangzhou() {
        let nov: Month = "2026-11".parse().unwrap();
        // 2026-11-01 00:00 in UTC+8 is 2026-10-31 16:00 UTC.
        assert_eq!(nov.start_ms(), (1_793_491_200 - 8 * 3600) * 1000);
        assert_eq!(format_cst(nov.start_ms()), "2026-11-01T00:00:00+08:00");
        assert_eq!(format_cst(nov.end_ms() - 1000), "2026-11-30T23:59:59+08:00");
        assert_eq!(Month::containing(nov.end_ms() - 1), nov);
        assert_eq!(Month::containing(nov.end_ms()).to_string(), "2026-12");
        assert_eq!(Month::containing(nov.start_ms() - 1).to_string(), "2026-10");
        let dec: Month = "2026-12".parse().unwrap();
        assert_eq!(dec.next().to_string(), "2027-01");
        assert_eq!(dec.end_ms() - dec.start_ms(), 31 * DAY_MS);
        let feb: Month = "2028-02".parse().unwrap();
        assert_eq!(feb.end_ms() - feb.start_ms(), 29 * DAY_MS, "leap year");
    }

    #[test]
    fn parsing() {
        for bad in [
            "", "2026", "2026-13", "2026-00", "2026-1", "26-11", "2026/11", "+026-11",
        ] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
        assert_eq!("2026-01".parse::<Month>().unwrap().to_string(), "2026-01");
    }
}
