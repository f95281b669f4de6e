//! SIA DC-09 event content: `SIA-DCS` and `ADM-CID` (Contact ID) data blocks and their mapping to [`EventKind`].

use crate::event::EventKind;

use super::SiaDc09Error;

/// An alarm-class code with no kind of its own (fire, intrusion, gas, no activity,
/// an unknown `…A` code): life-safety lane, so it is never taken for less than it is.
pub const OTHER_ALARM: EventKind = EventKind::Other(0x0e);
/// A trouble or supervisory code with no kind of its own: technical lane.
pub const OTHER_TROUBLE: EventKind = EventKind::Other(0x3e);
/// A restore, an opening/closing or another record-only code: informational lane.
pub const OTHER_INFO: EventKind = EventKind::Other(0xfe);

/// One event of a `SIA-DCS` data block: `Nri1/PA501` gives area `1`, code `PA`, address `501`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiaEvent {
    /// The two-letter SIA event code.
    pub code: String,
    /// Zone, user or free text after the code (`501`, `0^VX FRONTE ^`).
    pub address: String,
    /// The `ri` modifier (area / partition), if given.
    pub area: Option<String>,
}

/// One Contact ID event of an `ADM-CID` data block: `1110 00 129`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidEvent {
    /// `1` new event / opening, `3` restore / closing, `6` previously reported.
    pub qualifier: u8,
    /// Three-digit event code (`110`).
    pub event: String,
    /// Two-digit group or partition (`00`).
    pub partition: String,
    /// Three-digit zone or user number (`129`).
    pub zone: String,
}

/// Drop the optional `#acct|` in front of a data block: the header already names the account.
fn strip_account(data: &str) -> &str {
    match data.strip_prefix('#') {
        Some(rest) => rest.split_once('|').map_or("", |(_, after)| after),
        None => data,
    }
}

/// Parse a `SIA-DCS` data block (`#acct|Nri1/CL501`, `|Nri1/CL501`, `Nri1/WA000`, `NRR|Atest`).
///
/// Every `N` (new event) or `O` (old event) block is read; other blocks (`A` text,
/// `X` extended) are skipped. Within a block, lower-case modifiers (`ri`, `id`,
/// `ti`, `pi`) precede each two-letter upper-case code; `/` separates events.
pub fn parse_sia(data: &str) -> Result<Vec<SiaEvent>, SiaDc09Error> {
    let body = strip_account(data);
    let mut events = Vec::new();
    for block in split_outside_carets(body, b'|') {
        let Some(rest) = block.strip_prefix('N').or_else(|| block.strip_prefix('O')) else {
            continue;
        };
        parse_sia_block(rest, &mut events)?;
    }
    if events.is_empty() {
        return Err(SiaDc09Error::NoEvent(data.to_owned()));
    }
    Ok(events)
}

fn parse_sia_block(block: &str, events: &mut Vec<SiaEvent>) -> Result<(), SiaDc09Error> {
    let b = block.as_bytes();
    let mut i = 0;
    let mut area: Option<String> = None;
    while i < b.len() {
        if b[i] == b'/' {
            i += 1;
            continue;
        }
        let two = (b.get(i).copied(), b.get(i + 1).copied());
        match two {
            (Some(x), Some(y)) if x.is_ascii_lowercase() && y.is_ascii_lowercase() => {
                let start = i + 2;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_digit() || b[end] == b':') {
                    end += 1;
                }
                if &b[i..start] == b"ri" {
                    area = Some(block[start..end].to_owned());
                }
                i = end;
            }
            (Some(x), Some(y)) if x.is_ascii_uppercase() && y.is_ascii_uppercase() => {
                let start = i + 2;
                let end = next_outside_carets(b, start, b'/');
                events.push(SiaEvent {
                    code: block[i..start].to_owned(),
                    address: block[start..end].to_owned(),
                    area: area.clone(),
                });
                i = end;
            }
            _ => {
                // Text we cannot read: keep what was read before it, refuse a block with nothing.
                if events.is_empty() {
                    return Err(SiaDc09Error::BadSiaData(block.to_owned()));
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Index of the next `sep` at or after `from` that is not inside `^…^` text (or the end).
fn next_outside_carets(b: &[u8], from: usize, sep: u8) -> usize {
    let mut in_text = false;
    for (j, &c) in b.iter().enumerate().skip(from) {
        if c == b'^' {
            in_text = !in_text;
        } else if c == sep && !in_text {
            return j;
        }
    }
    b.len()
}

fn split_outside_carets(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    while start <= b.len() {
        let end = next_outside_carets(b, start, sep);
        parts.push(&s[start..end]);
        start = end + 1;
    }
    parts
}

/// Parse an `ADM-CID` data block: `#acct|Q EEE GG ZZZ`, spaces optional (`1110 00 129`).
pub fn parse_cid(data: &str) -> Result<CidEvent, SiaDc09Error> {
    let body = strip_account(data);
    let digits: Vec<u8> = body
        .bytes()
        .take_while(|c| *c != b'|' && *c != b'^')
        .filter(|c| *c != b' ')
        .collect();
    let bad = || SiaDc09Error::BadCidData(data.to_owned());
    if digits.len() != 9 || !digits.iter().all(u8::is_ascii_alphanumeric) {
        return Err(bad());
    }
    let qualifier = digits[0];
    if !qualifier.is_ascii_digit() {
        return Err(bad());
    }
    // Checked above: every byte is ASCII alphanumeric.
    let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&digits[r]).into_owned();
    Ok(CidEvent {
        qualifier: qualifier - b'0',
        event: text(1..4),
        partition: text(4..6),
        zone: text(6..9),
    })
}

/// Our kind for a Contact ID event. Qualifier `3` (restore) never raises an alarm;
/// `6` (previously reported) is treated as `1`, so a status report of a live
/// alarm is not lost.
pub fn cid_kind(qualifier: u8, event: &str) -> EventKind {
    let restore = qualifier == 3;
    let Ok(code) = event.parse::<u16>() else {
        return if restore { OTHER_INFO } else { OTHER_TROUBLE };
    };
    match (code, restore) {
        (100, false) => EventKind::Medical,
        (101 | 120..=123, false) => EventKind::Sos,
        // The resident's own alarm reset at the unit: it goes to the operator, closes nothing.
        (100 | 101 | 120..=123, true) => EventKind::Cancel,
        (406, false) => EventKind::Cancel,
        (137 | 144 | 145 | 383, false) => EventKind::Tamper,
        (301 | 342, false) => EventKind::PowerCut,
        (301 | 342, true) => EventKind::PowerRestored,
        (302 | 309 | 311 | 338 | 384, false) => EventKind::LowBattery,
        (601..=603, false) => EventKind::PeriodicTest,
        (100..=199, false) => OTHER_ALARM,
        (200..=399, false) => OTHER_TROUBLE,
        (_, true) => OTHER_INFO,
        (400..=699, false) => OTHER_INFO,
        _ => OTHER_TROUBLE,
    }
}

/// Our kind for a SIA event code. Explicit codes first; otherwise the SIA
/// convention for the second letter: `A` alarm, `T`/`S` trouble/supervisory,
/// `H`/`R`/`B`/`U`/`J` restore or bypass.
pub fn sia_kind(code: &str) -> EventKind {
    match code {
        "MA" => EventKind::Medical,
        "QA" | "PA" | "HA" => EventKind::Sos,
        "MH" | "MR" | "QH" | "QR" | "PH" | "PR" | "HH" | "HR" | "OC" | "BC" => EventKind::Cancel,
        "AT" => EventKind::PowerCut,
        "AR" => EventKind::PowerRestored,
        "YT" | "XT" | "YM" => EventKind::LowBattery,
        "TA" | "JA" | "ES" => EventKind::Tamper,
        "RP" | "RX" => EventKind::PeriodicTest,
        // Arming, power-up and other record-only reports (some end in `A`: `CA`, `OA`).
        "CL" | "OP" | "CA" | "OA" | "CG" | "OG" | "CE" | "CF" | "CI" | "CJ" | "CK" | "CP"
        | "CQ" | "CR" | "CS" | "OH" | "OI" | "OJ" | "OK" | "OR" | "OS" | "RR" | "RS" | "LR"
        | "JC" | "TE" | "TS" => OTHER_INFO,
        // System and transmitter families are troubles whatever their second letter.
        _ if code.starts_with('Y') || code.starts_with('X') => match code.as_bytes().get(1) {
            Some(b'R' | b'H' | b'J') => OTHER_INFO,
            _ => OTHER_TROUBLE,
        },
        _ => match code.as_bytes().get(1) {
            Some(b'A') => OTHER_ALARM,
            Some(b'H' | b'R' | b'B' | b'U' | b'J') => OTHER_INFO,
            _ => OTHER_TROUBLE,
        },
    }
}
