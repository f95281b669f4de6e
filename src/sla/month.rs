//! Calendar months in China Standard Time, the clock the city reports by.
//!
//! Stored times are UTC milliseconds; a report for "2026-11" covers
//! 2026-11-01 00:00 to 2026-12-01 00:00 in UTC+8. China has kept UTC+8 all
//! year since 1991, so a fixed offset is exact and needs no time-zone data.

use std::fmt;
use std::str::FromStr;

use pingantong_protocol::civil::{self, Civil};

/// UTC+8, in milliseconds.
pub const CST_OFFSET_MS: i64 = 8 * 3600 * 1000;
const CST_OFFSET_SECS: i32 = 8 * 3600;
#[cfg(test)]
const DAY_MS: i64 = 86_400_000;

/// The date and time in Guangzhou of an instant (any the server can hold).
fn cst(ms: i64) -> Civil {
    civil::of_ms_at_offset(ms, CST_OFFSET_SECS).expect("a stored time within years -9999..9999")
}

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
        let c = cst(ms);
        Self {
            year: i32::from(c.year),
            month: c.month as u32,
        }
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
        civil::at_offset_ms(
            self.year.into(),
            self.month.into(),
            1,
            0,
            0,
            0,
            CST_OFFSET_SECS,
        )
        .expect("months are checked to lie in 2000-2999")
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
    let c = cst(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+08:00",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
