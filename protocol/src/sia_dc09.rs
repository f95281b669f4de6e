//! SIA DC-09 (ANSI/SIA DC-09) event reporting over TCP and UDP: framing, CRC, AES, ACK/NAK/DUH (see SIA_DC09.md).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use crc::{CRC_16_ARC, Crc};
use sha2::{Digest, Sha256};

use crate::codec::{Codec, Frame, FramingError, Integrity, Observation, ReplyPlan};
use crate::event::{DeviceId, EventKind, Location};

mod codes;

pub use codes::{
    CidEvent, OTHER_ALARM, OTHER_INFO, OTHER_TROUBLE, SiaEvent, cid_kind, parse_cid, parse_sia,
    sia_kind,
};

/// Account number (as on the wire, e.g. `"12345A"`) → its AES key (16, 24 or 32
/// bytes), or `None` when the account has no key (or is not known).
pub type KeyLookup = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// The receiver's clock: milliseconds since the Unix epoch (UTC).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub const LF: u8 = b'\n';
pub const CR: u8 = b'\r';
/// Largest frame: the length field has three hex digits (`0LLL`), plus LF, CRC,
/// length and CR.
pub const MAX_FRAME_LEN: usize = 1 + 8 + 0xFFF + 1;
/// Default window (ANSI/SIA DC-09 §5.5.1.8): a message may be up to 40 s older…
pub const DEFAULT_WINDOW_PAST_MS: i64 = 40_000;
/// …and up to 20 s newer than the receiver's clock.
pub const DEFAULT_WINDOW_FUTURE_MS: i64 = 20_000;

static CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);
const ZERO_IV: [u8; 16] = [0; 16];
const TIMESTAMP_LEN: usize = 20; // "_HH:MM:SS,MM-DD-YYYY"
const MAX_ACCOUNT_LEN: usize = 16;

/// Everything that can be wrong with a DC-09 message or an encoder input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiaDc09Error {
    #[error("no CRC and length field (8 hex digits) at the start")]
    NoHeader,
    #[error("no ID token in quotes after the length field")]
    BadToken,
    #[error("the sequence number is not 4 digits")]
    BadSequence,
    #[error("bad {0} field: 1 to 6 hex digits expected")]
    BadField(&'static str),
    #[error("bad account: 1 to 16 letters or digits after '#' expected")]
    BadAccount,
    #[error("no '[' data block after the account")]
    NoDataBlock,
    #[error("the data block is not closed by ']'")]
    UnclosedData,
    #[error("bad timestamp {0:?}: _HH:MM:SS,MM-DD-YYYY expected")]
    BadTimestamp(String),
    #[error("unexpected bytes after the data: {0:?}")]
    Trailing(String),
    #[error("not ASCII text")]
    NotAscii,
    #[error("no key for account {0}: an encrypted message cannot be read")]
    NoKey(String),
    #[error("AES key is {0} bytes, 16, 24 or 32 expected")]
    BadKeyLength(usize),
    #[error("encrypted data is not whole 16-byte blocks of hex")]
    BadCiphertext,
    #[error("decrypted data is not pad|data]…_timestamp: wrong key?")]
    DecryptFailed,
    #[error("an encrypted message must carry a timestamp")]
    TimestampRequired,
    #[error("ID token {0:?} is not supported")]
    UnsupportedToken(String),
    #[error("{0:?} is an answer, not an event: receivers do not take answers")]
    UnexpectedAnswer(String),
    #[error("no event in SIA-DCS data {0:?}")]
    NoEvent(String),
    #[error("SIA-DCS data {0:?} cannot be read")]
    BadSiaData(String),
    #[error("ADM-CID data {0:?} is not Q EEE GG ZZZ")]
    BadCidData(String),
    #[error("data may not contain '[', ']', CR or LF: {0:?}")]
    BadData(String),
    #[error("sequence number {0} is over 9999")]
    SequenceRange(u16),
    #[error("message of {0} bytes is over the 4095 a length field can say")]
    TooLong(usize),
}

/// The message types (ID tokens) a receiver acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// `SIA-DCS` data, e.g. `#1234|Nri1/PA501`.
    SiaDcs(&'a str),
    /// `ADM-CID` data, e.g. `#1234|1101 01 001`.
    AdmCid(&'a str),
    /// `NULL`: link test, empty data.
    Null,
}

impl Payload<'_> {
    fn token(&self) -> &'static str {
        match self {
            Payload::SiaDcs(_) => "SIA-DCS",
            Payload::AdmCid(_) => "ADM-CID",
            Payload::Null => "NULL",
        }
    }

    fn data(&self) -> &str {
        match self {
            Payload::SiaDcs(d) | Payload::AdmCid(d) => d,
            Payload::Null => "",
        }
    }
}

/// One DC-09 message, parsed (and decrypted) but not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// ID token without the `*` (`SIA-DCS`, `ADM-CID`, `NULL`, `ACK`, `NAK`, `DUH`).
    pub token: String,
    /// The token had a leading `*`: the data and timestamp were AES-encrypted.
    pub encrypted: bool,
    /// The sequence number exactly as sent (4 digits).
    pub seq_text: String,
    pub seq: u16,
    /// Receiver number without the `R`, exactly as sent.
    pub receiver: Option<String>,
    /// Account prefix (line) without the `L`, exactly as sent.
    pub line: Option<String>,
    /// Account without the `#`; `None` only in a NAK (`A0`).
    pub account: Option<String>,
    /// The data block's content (decrypted, padding removed).
    pub data: String,
    /// Extended data blocks (`M0026B9E4268B`, `X006E07.7777777`), without brackets.
    pub xdata: Vec<String>,
    /// The timestamp, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: Option<i64>,
    pub crc_ok: bool,
    pub length_ok: bool,
}

/// CRC-16/ARC as DC-09 uses it.
pub fn crc16(bytes: &[u8]) -> u16 {
    CRC16.checksum(bytes)
}

/// Receiver policy knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How much older than the receiver clock a message timestamp may be.
    pub window_past_ms: i64,
    /// How much newer than the receiver clock a message timestamp may be.
    pub window_future_ms: i64,
    /// Also check (and NAK) timestamps of unencrypted messages. The standard only
    /// requires the test for encrypted ones; the NAK carries our clock so a panel
    /// can resynchronise, which is why it is on by default (as in pysiaalarm).
    pub check_plain_timestamps: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_past_ms: DEFAULT_WINDOW_PAST_MS,
            window_future_ms: DEFAULT_WINDOW_FUTURE_MS,
            check_plain_timestamps: true,
        }
    }
}

/// The DC-09 receiver side, one value per connection (or datagram).
pub struct SiaDc09Codec {
    keys: KeyLookup,
    clock: Clock,
    config: Config,
    /// Varies the padding of encrypted ACKs sent within the same millisecond.
    pad_counter: u64,
}

impl SiaDc09Codec {
    pub fn new(keys: KeyLookup, clock: Clock) -> Self {
        Self::with_config(keys, clock, Config::default())
    }

    pub fn with_config(keys: KeyLookup, clock: Clock, config: Config) -> Self {
        Self {
            keys,
            clock,
            config,
            pad_counter: 0,
        }
    }

    /// Decode one message already cut from the stream; `body` excludes LF and CR.
    fn decode_message(&mut self, raw: Bytes, body: &[u8]) -> Frame {
        let integrity = integrity(body);
        let crc_ok = integrity != Integrity::BadChecksum;
        let mut frame = Frame {
            raw,
            integrity,
            device: None,
            serial: None,
            observations: Vec::new(),
            summary: "unreadable".into(),
            parse_error: None,
            reply: ReplyPlan::None,
            event_key: None,
        };
        let header = match parse_header(body) {
            Ok(h) => h,
            Err(e) => {
                frame.parse_error = Some(e.to_string());
                return frame;
            }
        };
        frame.device = header.account.and_then(|a| DeviceId::parse(a).ok());
        frame.serial = Some(u32::from(header.seq));
        frame.summary = match header.encrypted {
            true => format!("*{}", header.token),
            false => header.token.to_owned(),
        };
        if matches!(header.token, "ACK" | "NAK" | "DUH" | "RSP") {
            // Never answer an answer: two receivers (or a loop) would talk forever.
            frame.parse_error =
                Some(SiaDc09Error::UnexpectedAnswer(header.token.into()).to_string());
            return frame;
        }
        // A message we cannot process but which arrived intact gets DUH, so the
        // panel stops repeating it; a damaged one gets nothing, so it repeats.
        let duh = |h: &Header<'_>| match crc_ok {
            true => ReplyPlan::AfterCommit {
                ok: duh(h.seq_text, h.receiver, h.line, h.account),
                failed: None,
            },
            false => ReplyPlan::None,
        };
        let account = header.account.unwrap_or("");
        let key = if header.encrypted {
            match (self.keys)(account) {
                Some(k) => Some(k),
                None => {
                    frame.parse_error = Some(SiaDc09Error::NoKey(account.into()).to_string());
                    return frame;
                }
            }
        } else {
            None
        };
        let content = match &key {
            Some(k) => decrypt_content(header.rest, k),
            None => parse_content(header.rest),
        };
        let content = match content {
            Ok(c) => c,
            // A wrong key or damaged ciphertext: silence, so the panel repeats and
            // then fails over to its backup path.
            Err(e) if key.is_some() => {
                frame.parse_error = Some(e.to_string());
                return frame;
            }
            Err(e) => {
                frame.parse_error = Some(e.to_string());
                frame.reply = duh(&header);
                return frame;
            }
        };
        // A retransmission repeats these and changes only the send time (and,
        // encrypted, the pad): they are the event. The account is the device.
        frame.event_key = Some(Bytes::from(format!(
            "{}\n{}\n{}\n{}",
            header.token,
            header.seq_text,
            content.data,
            content.xdata.join("\n")
        )));
        if frame.device.is_none() {
            let named = content
                .data
                .strip_prefix('#')
                .and_then(|d| d.split('|').next());
            frame.device = named.and_then(|a| DeviceId::parse(a).ok());
        }
        let device_time = content.timestamp_ms.and_then(|t| u64::try_from(t).ok());
        let location = location(&content.xdata);
        let observe = |kind, code: String| Observation {
            kind,
            device_time_ms: device_time,
            battery_pct: None,
            location,
            signal: None,
            code,
        };
        let interpreted = match header.token {
            "NULL" => Ok((
                vec![observe(EventKind::Heartbeat, "DC-09 NULL".into())],
                String::new(),
            )),
            "SIA-DCS" => parse_sia(&content.data).map(|events| {
                let mut detail = Vec::new();
                let obs = events
                    .iter()
                    .map(|e| {
                        detail.push(sia_detail(e));
                        observe(sia_kind(&e.code), format!("SIA {}", e.code))
                    })
                    .collect();
                (obs, detail.join(", "))
            }),
            "ADM-CID" => parse_cid(&content.data).map(|e| {
                let code = format!("CID {}{}", e.qualifier, e.event);
                let detail = format!(
                    "{}{} group {} zone {}",
                    e.qualifier, e.event, e.partition, e.zone
                );
                (vec![observe(cid_kind(e.qualifier, &e.event), code)], detail)
            }),
            other => Err(SiaDc09Error::UnsupportedToken(other.into())),
        };
        match interpreted {
            Ok((obs, detail)) => {
                frame.observations = obs;
                if !detail.is_empty() {
                    frame.summary = format!("{} {detail}", frame.summary);
                }
            }
            Err(e) => {
                frame.parse_error = Some(e.to_string());
                frame.reply = duh(&header);
                return frame;
            }
        }
        if !crc_ok {
            return frame;
        }
        let now = (self.clock)();
        let checked = header.encrypted || self.config.check_plain_timestamps;
        let in_window = match content.timestamp_ms {
            Some(t) if checked => {
                t >= now.saturating_sub(self.config.window_past_ms)
                    && t <= now.saturating_add(self.config.window_future_ms)
            }
            Some(_) => true,
            None => !header.encrypted,
        };
        let ok = if !in_window {
            frame
                .summary
                .push_str(" (timestamp outside the window: NAK)");
            nak(now)
        } else if let Some(k) = &key {
            self.pad_counter = self.pad_counter.wrapping_add(1);
            let seed = [
                &now.to_be_bytes()[..],
                &self.pad_counter.to_be_bytes(),
                body,
            ]
            .concat();
            match encrypted_ack(&header, k, now, &seed) {
                Ok(b) => b,
                // Unreachable with a key that just decrypted the message.
                Err(e) => {
                    frame.parse_error = Some(e.to_string());
                    return frame;
                }
            }
        } else {
            ack(
                header.seq_text,
                header.receiver,
                header.line,
                header.account,
            )
        };
        // While the receiver cannot store, DUH tells the panel at once, so it
        // can report over its backup path instead of waiting out its ACK
        // time-out (SIA_DC09.md, "Answers").
        let failed = self::duh(
            header.seq_text,
            header.receiver,
            header.line,
            header.account,
        );
        frame.reply = ReplyPlan::AfterCommit {
            ok,
            failed: Some(failed),
        };
        frame
    }
}

impl Codec for SiaDc09Codec {
    fn protocol(&self) -> &'static str {
        "sia_dc09"
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    /// Frames are cut at LF…CR, not by the length field: panels in the field get
    /// the length wrong more often than the CRC, and the CRC decides.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        loop {
            // Line noise between frames (CR, NUL, blanks) is dropped silently.
            let noise = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | 0 | b' ' | b'\t'))
                .count();
            let _ = buf.split_to(noise);
            if buf.is_empty() {
                return Ok(None);
            }
            let window = &buf[..buf.len().min(MAX_FRAME_LEN)];
            let Some(cr) = window.iter().position(|b| *b == CR) else {
                match window.iter().rposition(|b| *b == LF) {
                    Some(0) if buf.len() >= MAX_FRAME_LEN => {
                        return Err(FramingError {
                            reason: "too_long",
                            detail: format!("no CR within {MAX_FRAME_LEN} bytes of the LF"),
                            reply: None,
                        });
                    }
                    Some(0) => return Ok(None),
                    Some(lf) => {
                        if let Some(f) = garbage(buf.split_to(lf).freeze()) {
                            return Ok(Some(f));
                        }
                        continue;
                    }
                    None => {
                        let n = window.len();
                        if let Some(f) = garbage(buf.split_to(n).freeze()) {
                            return Ok(Some(f));
                        }
                        continue;
                    }
                }
            };
            match window[..cr].iter().rposition(|b| *b == LF) {
                Some(lf) if lf > 0 => {
                    if let Some(f) = garbage(buf.split_to(lf).freeze()) {
                        return Ok(Some(f));
                    }
                    continue;
                }
                Some(_) => {
                    let raw = buf.split_to(cr + 1).freeze();
                    if raw.len() == 2 {
                        continue; // "\n\r": an empty line, nothing to store
                    }
                    let body = raw.slice(1..cr);
                    return Ok(Some(self.decode_message(raw, &body)));
                }
                // No LF before the CR: tolerated, the CRC still guards the content.
                None => {
                    let raw = buf.split_to(cr + 1).freeze();
                    let body = raw.slice(..cr);
                    return Ok(Some(self.decode_message(raw, &body)));
                }
            }
        }
    }
}

/// Bytes outside any LF…CR frame. Kept (as a frame with a parse error) unless
/// they are only line noise.
fn garbage(raw: Bytes) -> Option<Frame> {
    if raw
        .iter()
        .all(|b| matches!(b, b'\r' | b'\n' | 0 | b' ' | b'\t'))
    {
        return None;
    }
    Some(Frame {
        parse_error: Some(format!("{} bytes outside a LF…CR frame skipped", raw.len())),
        raw,
        integrity: Integrity::BadChecksum,
        device: None,
        serial: None,
        observations: Vec::new(),
        summary: "garbage".into(),
        reply: ReplyPlan::None,
        event_key: None,
    })
}

/// CRC and length verdict for a message body (LF and CR excluded). Without a
/// readable CRC field there is no checksum to trust: `BadChecksum`.
fn integrity(body: &[u8]) -> Integrity {
    let (Some(crc), Some(len)) = (hex_field(body, 0), hex_field(body, 4)) else {
        return Integrity::BadChecksum;
    };
    let content = &body[8..];
    if crc16(content) != crc {
        Integrity::BadChecksum
    } else if usize::from(len) != content.len() {
        Integrity::BadLength
    } else {
        Integrity::Intact
    }
}

fn hex_field(body: &[u8], at: usize) -> Option<u16> {
    let b = body.get(at..at + 4)?;
    if !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// The header of a message, borrowed from its body.
struct Header<'a> {
    token: &'a str,
    encrypted: bool,
    seq_text: &'a str,
    seq: u16,
    receiver: Option<&'a str>,
    line: Option<&'a str>,
    account: Option<&'a str>,
    /// Everything after the `[`.
    rest: &'a [u8],
}

fn parse_header(body: &[u8]) -> Result<Header<'_>, SiaDc09Error> {
    if hex_field(body, 0).is_none() || hex_field(body, 4).is_none() {
        return Err(SiaDc09Error::NoHeader);
    }
    let text = std::str::from_utf8(body).map_err(|_| SiaDc09Error::NotAscii)?;
    if !text.is_ascii() {
        return Err(SiaDc09Error::NotAscii);
    }
    let s = &text[8..];
    let s = s.strip_prefix('"').ok_or(SiaDc09Error::BadToken)?;
    let end = s
        .find('"')
        .filter(|e| (1..=16).contains(e))
        .ok_or(SiaDc09Error::BadToken)?;
    let (full_token, s) = (&s[..end], &s[end + 1..]);
    let (encrypted, token) = match full_token.strip_prefix('*') {
        Some(t) => (true, t),
        None => (false, full_token),
    };
    if token.is_empty()
        || !token
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(SiaDc09Error::BadToken);
    }
    let seq_text = s
        .get(..4)
        .filter(|q| q.bytes().all(|c| c.is_ascii_digit()))
        .ok_or(SiaDc09Error::BadSequence)?;
    let seq = seq_text
        .parse::<u16>()
        .map_err(|_| SiaDc09Error::BadSequence)?;
    let mut s = &s[4..];
    let mut field = |prefix: char, name: &'static str| -> Result<Option<&str>, SiaDc09Error> {
        let Some(after) = s.strip_prefix(prefix) else {
            return Ok(None);
        };
        let n = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        if !(1..=6).contains(&n) {
            return Err(SiaDc09Error::BadField(name));
        }
        s = &after[n..];
        Ok(Some(&after[..n]))
    };
    let receiver = field('R', "receiver")?;
    let mut line = field('L', "account prefix")?;
    let account = match s.strip_prefix('#') {
        Some(after) => {
            let n = after.bytes().take_while(u8::is_ascii_alphanumeric).count();
            if !(1..=MAX_ACCOUNT_LEN).contains(&n) {
                return Err(SiaDc09Error::BadAccount);
            }
            s = &after[n..];
            Some(&after[..n])
        }
        // A NAK names no account: `…L0A0[]`, and `A` is a hex digit, so the
        // account prefix swallowed the `A0`.
        None if token == "NAK" => {
            line = line
                .map(|l| l.strip_suffix("A0").unwrap_or(l))
                .filter(|l| !l.is_empty());
            None
        }
        // Some panels name the account only in the data (`[#006969|N…]`); an
        // encrypted message must name it here, its key depends on it.
        None if !encrypted && s.starts_with('[') => None,
        None => return Err(SiaDc09Error::BadAccount),
    };
    let rest = s.strip_prefix('[').ok_or(SiaDc09Error::NoDataBlock)?;
    Ok(Header {
        token,
        encrypted,
        seq_text,
        seq,
        receiver,
        line,
        account,
        rest: rest.as_bytes(),
    })
}

/// Data, extended data and timestamp of a message, after the first `[`.
struct Content {
    data: String,
    xdata: Vec<String>,
    timestamp_ms: Option<i64>,
}

fn parse_content(rest: &[u8]) -> Result<Content, SiaDc09Error> {
    let text = std::str::from_utf8(rest).map_err(|_| SiaDc09Error::NotAscii)?;
    let close = text.find(']').ok_or(SiaDc09Error::UnclosedData)?;
    let data = &text[..close];
    if data.contains('[') {
        return Err(SiaDc09Error::UnclosedData);
    }
    let mut s = &text[close + 1..];
    let mut xdata = Vec::new();
    while let Some(after) = s.strip_prefix('[') {
        let end = after.find(']').ok_or(SiaDc09Error::UnclosedData)?;
        xdata.push(after[..end].to_owned());
        s = &after[end + 1..];
    }
    let timestamp_ms = match s {
        "" => None,
        t if t.starts_with('_') => Some(parse_timestamp(t)?),
        other => return Err(SiaDc09Error::Trailing(other.to_owned())),
    };
    Ok(Content {
        data: data.to_owned(),
        xdata,
        timestamp_ms,
    })
}

/// Decrypt the hex after `[` and read `pad|data][xdata]_timestamp`.
///
/// The pad may be any bytes but `[`, `]` and `|` (ANSI/SIA DC-09-2026
/// §5.4.4.3): transmitters use letters, control characters or binary. It ends at
/// the first `|`, or, with no data (a NULL, an ACK), at the `]`. What follows the
/// pad is printable text (data, extended data, timestamp); a wrong key turns
/// it into noise — 20 random bytes are all printable less than once in 10⁸ — which is how
/// a wrong key is told from a good one: by what follows the pad, never by the pad.
fn decrypt_content(rest: &[u8], key: &[u8]) -> Result<Content, SiaDc09Error> {
    if rest.is_empty() || !rest.len().is_multiple_of(32) || !rest.iter().all(u8::is_ascii_hexdigit)
    {
        return Err(SiaDc09Error::BadCiphertext);
    }
    let mut buf: Vec<u8> = rest
        .chunks(2)
        .map(|p| (hex_val(p[0]) << 4) | hex_val(p[1]))
        .collect();
    cbc_decrypt(key, &mut buf)?;
    let end = buf
        .iter()
        .position(|c| matches!(c, b'|' | b']' | b'['))
        .ok_or(SiaDc09Error::DecryptFailed)?;
    let start = match buf[end] {
        b'|' => end + 1,
        b']' => end,
        _ => return Err(SiaDc09Error::DecryptFailed),
    };
    let text = &buf[start..];
    if !text.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(SiaDc09Error::DecryptFailed);
    }
    parse_content(text)
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn cbc_encrypt(key: &[u8], buf: &mut [u8]) -> Result<(), SiaDc09Error> {
    let n = buf.len();
    let bad = |_| SiaDc09Error::BadKeyLength(key.len());
    let r = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &ZERO_IV)
            .map_err(bad)?
            .encrypt_padded::<NoPadding>(buf, n)
            .map(|_| ()),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, &ZERO_IV)
            .map_err(bad)?
            .encrypt_padded::<NoPadding>(buf, n)
            .map(|_| ()),
        32 => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &ZERO_IV)
            .map_err(bad)?
            .encrypt_padded::<NoPadding>(buf, n)
            .map(|_| ()),
        other => return Err(SiaDc09Error::BadKeyLength(other)),
    };
    r.map_err(|_| SiaDc09Error::BadCiphertext)
}

fn cbc_decrypt(key: &[u8], buf: &mut [u8]) -> Result<(), SiaDc09Error> {
    let bad = |_| SiaDc09Error::BadKeyLength(key.len());
    let r = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, &ZERO_IV)
            .map_err(bad)?
            .decrypt_padded::<NoPadding>(buf)
            .map(|_| ()),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, &ZERO_IV)
            .map_err(bad)?
            .decrypt_padded::<NoPadding>(buf)
            .map(|_| ()),
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, &ZERO_IV)
            .map_err(bad)?
            .decrypt_padded::<NoPadding>(buf)
            .map(|_| ()),
        other => return Err(SiaDc09Error::BadKeyLength(other)),
    };
    r.map_err(|_| SiaDc09Error::BadCiphertext)
}

/// Parse a whole message body (LF and CR optional), decrypting with `key` when
/// the token says it is encrypted. For simulators reading our answers, and tools.
pub fn parse_message(bytes: &[u8], key: Option<&[u8]>) -> Result<Message, SiaDc09Error> {
    let body = bytes.strip_prefix(b"\n").unwrap_or(bytes);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let integrity = integrity(body);
    let h = parse_header(body)?;
    let content = if h.encrypted {
        let account = h.account.unwrap_or("");
        decrypt_content(
            h.rest,
            key.ok_or_else(|| SiaDc09Error::NoKey(account.into()))?,
        )?
    } else {
        parse_content(h.rest)?
    };
    Ok(Message {
        token: h.token.to_owned(),
        encrypted: h.encrypted,
        seq_text: h.seq_text.to_owned(),
        seq: h.seq,
        receiver: h.receiver.map(str::to_owned),
        line: h.line.map(str::to_owned),
        account: h.account.map(str::to_owned),
        data: content.data,
        xdata: content.xdata,
        timestamp_ms: content.timestamp_ms,
        crc_ok: integrity != Integrity::BadChecksum,
        length_ok: integrity == Integrity::Intact,
    })
}

/// `_HH:MM:SS,MM-DD-YYYY` (UTC) → milliseconds since the Unix epoch.
pub fn parse_timestamp(t: &str) -> Result<i64, SiaDc09Error> {
    let bad = || SiaDc09Error::BadTimestamp(t.to_owned());
    let b = t.as_bytes();
    if b.len() != TIMESTAMP_LEN
        || b[0] != b'_'
        || b[3] != b':'
        || b[6] != b':'
        || b[9] != b','
        || b[12] != b'-'
        || b[15] != b'-'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, SiaDc09Error> {
        let d = &b[r];
        if !d.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(d.iter().fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
    };
    let (hh, mi, ss) = (num(1..3)?, num(4..6)?, num(7..9)?);
    let (mo, dd, yy) = (num(10..12)?, num(13..15)?, num(16..20)?);
    crate::civil::utc_ms(yy, mo, dd, hh, mi, ss).ok_or_else(bad)
}

/// Milliseconds since the Unix epoch → `_HH:MM:SS,MM-DD-YYYY` (UTC, seconds
/// truncated); an instant outside years -9999..9999 (never the server's
/// clock) is written as the epoch.
pub fn format_timestamp(ms: i64) -> String {
    let c = crate::civil::utc_of_ms(ms)
        .or_else(|| crate::civil::utc_of_ms(0))
        .expect("the epoch is a date");
    format!(
        "_{:02}:{:02}:{:02},{:02}-{:02}-{:04}",
        c.hour, c.minute, c.second, c.month, c.day, c.year
    )
}

/// A position from `[X…]` (longitude) and `[Y…]` (latitude) extended data:
/// degrees, hemisphere, then decimal minutes: `X006E07.7777777`, `Y49N06.6666666`.
fn location(xdata: &[String]) -> Option<Location> {
    let find = |tag: char| xdata.iter().find_map(|x| x.strip_prefix(tag));
    let lon = coordinate(find('X')?, b'E', b'W', 180.0)?;
    let lat = coordinate(find('Y')?, b'N', b'S', 90.0)?;
    Some(Location {
        lat,
        lon,
        accuracy_m: None,
    })
}

fn coordinate(s: &str, pos: u8, neg: u8, limit: f64) -> Option<f64> {
    let h = s.bytes().position(|c| c == pos || c == neg)?;
    let deg: f64 = s[..h].parse().ok()?;
    let min: f64 = match &s[h + 1..] {
        "" => 0.0,
        m => m.parse().ok()?,
    };
    if !(0.0..60.0).contains(&min) || !(0.0..=limit).contains(&deg) {
        return None;
    }
    let v = deg + min / 60.0;
    let v = if s.as_bytes()[h] == neg { -v } else { v };
    (v.abs() <= limit).then_some(v)
}

fn sia_detail(e: &SiaEvent) -> String {
    let mut s = e.code.clone();
    if !e.address.is_empty() {
        s.push(' ');
        s.push_str(&e.address);
    }
    if let Some(a) = &e.area {
        s.push_str(" area ");
        s.push_str(a);
    }
    s
}

/// LF, CRC, length, `content`, CR.
fn frame(content: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(content.len() + 10);
    out.extend_from_slice(
        format!("\n{:04X}{:04X}", crc16(content.as_bytes()), content.len()).as_bytes(),
    );
    out.extend_from_slice(content.as_bytes());
    out.extend_from_slice(b"\r");
    out.freeze()
}

fn header_text(
    token: &str,
    seq: &str,
    receiver: Option<&str>,
    line: Option<&str>,
    account: Option<&str>,
) -> String {
    let mut s = format!("\"{token}\"{seq}");
    if let Some(r) = receiver {
        s.push('R');
        s.push_str(r);
    }
    if let Some(l) = line {
        s.push('L');
        s.push_str(l);
    }
    if let Some(a) = account {
        s.push('#');
        s.push_str(a);
    }
    s
}

/// `"ACK"seq Rrcvr Lpref #acct []`, echoing the message's fields exactly (an
/// absent receiver, prefix or account stays absent).
pub fn ack(seq: &str, receiver: Option<&str>, line: Option<&str>, account: Option<&str>) -> Bytes {
    frame(&format!(
        "{}[]",
        header_text("ACK", seq, receiver, line, account)
    ))
}

/// `"DUH"seq Rrcvr Lpref #acct []`: received, but cannot be processed. Never encrypted.
pub fn duh(seq: &str, receiver: Option<&str>, line: Option<&str>, account: Option<&str>) -> Bytes {
    frame(&format!(
        "{}[]",
        header_text("DUH", seq, receiver, line, account)
    ))
}

/// `"NAK"0000R0L0A0[]_HH:MM:SS,MM-DD-YYYY` with the receiver's clock. Never encrypted.
pub fn nak(now_ms: i64) -> Bytes {
    frame(&format!("\"NAK\"0000R0L0A0[]{}", format_timestamp(now_ms)))
}

fn encrypted_ack(
    h: &Header<'_>,
    key: &[u8],
    now_ms: i64,
    seed: &[u8],
) -> Result<Bytes, SiaDc09Error> {
    let head = header_text("*ACK", h.seq_text, h.receiver, h.line, h.account);
    let plain = format!("|]{}", format_timestamp(now_ms));
    let hex = encrypt_block(&plain, key, seed)?;
    Ok(frame(&format!("{head}[{hex}")))
}

/// Prefix `plain` with 1 to 16 pad characters (letters and digits, never `|[]`)
/// to whole AES blocks, encrypt with a zero IV, return upper-case hex.
fn encrypt_block(plain: &str, key: &[u8], seed: &[u8]) -> Result<String, SiaDc09Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let pad_len = 16 - plain.len() % 16;
    // The pad is the first block CBC chains from: with a zero IV it must vary, or
    // equal messages would encrypt equally. A hash of the seed is enough for that.
    let digest = Sha256::digest(seed);
    let mut buf: Vec<u8> = digest
        .iter()
        .take(pad_len)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
        .collect();
    buf.extend_from_slice(plain.as_bytes());
    cbc_encrypt(key, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02X}")).collect())
}

/// Encode a message as a panel sends it (for simulators and tests): `NULL`,
/// `SIA-DCS` or `ADM-CID` with optional receiver and account prefix, encrypted
/// with `key` when given (then `timestamp_ms` is required). The pad is derived
/// from the content, so the same inputs give the same bytes.
pub fn encode_message(
    account: &str,
    seq: u16,
    receiver: Option<&str>,
    line: Option<&str>,
    payload: Payload<'_>,
    key: Option<&[u8]>,
    timestamp_ms: Option<i64>,
) -> Result<Bytes, SiaDc09Error> {
    if seq > 9999 {
        return Err(SiaDc09Error::SequenceRange(seq));
    }
    if account.is_empty()
        || account.len() > MAX_ACCOUNT_LEN
        || !account.bytes().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(SiaDc09Error::BadAccount);
    }
    for (v, name) in [(receiver, "receiver"), (line, "account prefix")] {
        if let Some(v) = v
            && (!(1..=6).contains(&v.len()) || !v.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(SiaDc09Error::BadField(name));
        }
    }
    let data = payload.data();
    if data
        .bytes()
        .any(|c| matches!(c, b'[' | b']' | b'\r' | b'\n') || !(0x20..0x7f).contains(&c))
    {
        return Err(SiaDc09Error::BadData(data.to_owned()));
    }
    let ts = timestamp_ms.map(format_timestamp).unwrap_or_default();
    let seq_text = format!("{seq:04}");
    let content = match key {
        None => format!(
            "{}[{data}]{ts}",
            header_text(payload.token(), &seq_text, receiver, line, Some(account))
        ),
        Some(k) => {
            if timestamp_ms.is_none() {
                return Err(SiaDc09Error::TimestampRequired);
            }
            let token = format!("*{}", payload.token());
            let plain = format!("|{data}]{ts}");
            let hex = encrypt_block(&plain, k, format!("{account}{seq_text}{plain}").as_bytes())?;
            format!(
                "{}[{hex}",
                header_text(&token, &seq_text, receiver, line, Some(account))
            )
        }
    };
    if content.len() > 0xFFF {
        return Err(SiaDc09Error::TooLong(content.len()));
    }
    Ok(frame(&content))
}

#[cfg(test)]
mod tests;
