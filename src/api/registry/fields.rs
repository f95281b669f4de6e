//! The registry's field rules, shared by the JSON endpoints and the CSV
//! import: each check names its field in the message (`phone: …`).
//!
//! Every rule here is also stated in the OpenAPI document (lengths, patterns,
//! ranges), and the two must agree: a request the document allows is taken,
//! one it forbids is refused. Patterns end in `$`, which in the document's
//! regular-expression dialects also matches before one final newline, so a
//! value is checked (and stored) without that one newline.

use pingantong_domain::{NoticeRoute, Phone};
use pingantong_protocol::DeviceId;

use pingantong_store::{ClientEntry, ClientRef, ContactEntry, DeviceEntry, NewClient};

/// Protocols a device may speak, as stored in `devices.protocol`.
pub const PROTOCOLS: [&str; 7] = [
    "native", "gt06", "watch", "h02", "eview", "sia_dc09", "mqtt",
];
/// The city's subsidy categories.
pub const SUBSIDY_CATEGORIES: [&str; 4] = [
    "destitute",
    "advanced_age",
    "living_alone",
    "special_contribution",
];

pub const NAME_MAX: usize = 100;
pub const ADDRESS_MAX: usize = 300;
pub const AREA_MAX: usize = 50;
pub const RELATION_MAX: usize = 50;
pub const NOTES_MAX: usize = 4000;
pub const LANGUAGE_MAX: usize = 35;
pub const REF_MAX: usize = 64;
/// Contacts on one client's list.
pub const CONTACTS_MAX: usize = 10;
pub const BIRTH_YEAR: (i64, i64) = (1890, 2100);
/// A device's own heartbeat interval, seconds (10 s to a week).
pub const HEARTBEAT_SECS: (i64, i64) = (10, 604_800);
/// Latest `away_until`: 2100-01-01T00:00:00Z in ms.
pub const AWAY_MAX_MS: i64 = 4_102_444_800_000;
/// A native pendant's HMAC key, bytes.
pub const NATIVE_KEY: (usize, usize) = (16, 64);
/// A DC-09 account's AES key, bytes.
pub const DC09_KEYS: [usize; 3] = [16, 24, 32];

type Checked<T> = Result<T, String>;

/// The value a pattern ending in `$` judges: without one final newline.
fn unanchored(v: &str) -> &str {
    v.strip_suffix('\n').unwrap_or(v)
}

fn too_long(field: &str, v: &str, max: usize) -> Checked<()> {
    if v.chars().count() > max {
        return Err(format!("{field}: at most {max} characters"));
    }
    Ok(())
}

/// Space to every reading of the document's `\S`. JSON Schema validators
/// read patterns as ECMA-262 (U+0085 and U+001C–U+001F are not space there),
/// Python's as Unicode (they are): a value either calls text is accepted, so
/// only what both call space counts as space.
fn space(c: char) -> bool {
    c.is_whitespace() && c != '\u{85}'
}

fn blank(v: &str) -> bool {
    v.chars().all(space)
}

/// Free text as stored: NUL (which PostgreSQL text cannot hold) as U+FFFD, trimmed.
fn stored(v: &str) -> String {
    v.replace('\0', "\u{fffd}").trim_matches(space).to_owned()
}

/// Text that must say something (`minLength 1`, `pattern \S`).
pub fn required(field: &str, v: &str, max: usize) -> Checked<String> {
    too_long(field, v, max)?;
    if blank(v) {
        return Err(format!("{field}: required"));
    }
    Ok(stored(v))
}

/// Text that may be empty.
pub fn optional(field: &str, v: &str, max: usize) -> Checked<String> {
    too_long(field, v, max)?;
    Ok(stored(v))
}

/// A phone number ([`Phone`]'s rule), named by `field` when refused.
pub fn phone(field: &str, v: &str) -> Checked<String> {
    Phone::parse(v)
        .map(String::from)
        .map_err(|why| format!("{field}: {why}"))
}

/// `^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$`: a language tag (`zh-CN`, `yue`, `en`).
pub fn language(v: &str) -> Checked<String> {
    too_long("language", v, LANGUAGE_MAX)?;
    let s = unanchored(v);
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    let ok = (2..=8).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        return Err("language: a language tag such as zh-CN, yue or en".into());
    }
    Ok(s.to_owned())
}

/// `^[!-~]+$`, at most 64: printable ASCII without spaces.
pub fn external_ref(field: &str, v: &str) -> Checked<String> {
    too_long(field, v, REF_MAX)?;
    let s = unanchored(v);
    if s.is_empty() || !s.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(format!(
            "{field}: 1 to {REF_MAX} printable ASCII characters, no spaces"
        ));
    }
    Ok(s.to_owned())
}

pub fn location(lat: f64, lon: f64) -> Checked<(f64, f64)> {
    if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
        return Err("lat: between -90 and 90".into());
    }
    if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
        return Err("lon: between -180 and 180".into());
    }
    Ok((lat, lon))
}

pub fn within(field: &str, v: i64, (min, max): (i64, i64)) -> Checked<i64> {
    if !(min..=max).contains(&v) {
        return Err(format!("{field}: between {min} and {max}"));
    }
    Ok(v)
}

pub fn one_of<'a>(field: &str, v: &str, allowed: &[&'a str]) -> Checked<&'a str> {
    allowed
        .iter()
        .find(|a| **a == v)
        .copied()
        .ok_or_else(|| format!("{field}: one of {}", allowed.join(", ")))
}

/// Hex digits, two per byte, making a key of an allowed length.
pub fn hex_key(
    field: &str,
    v: &str,
    allowed: impl Fn(usize) -> bool,
    lengths: &str,
) -> Checked<Vec<u8>> {
    let s = unanchored(v);
    let bad = || format!("{field}: {lengths} written as hex digits (two per byte)");
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect();
    if !allowed(bytes.len()) {
        return Err(bad());
    }
    Ok(bytes)
}

/// A device's secret, as its protocol needs it: a native pendant signs with
/// an HMAC key of 16 to 64 bytes; a DC-09 account may have an AES key (16,
/// 24 or 32 bytes; none for plain accounts); the others carry none.
pub fn device_secret(protocol: &str, hex: Option<&str>) -> Checked<Vec<u8>> {
    match (protocol, hex.filter(|h| !unanchored(h).is_empty())) {
        ("native", None) => {
            Err("secret: a native pendant needs its HMAC key (16 to 64 bytes, hex)".into())
        }
        ("native", Some(h)) => hex_key(
            "secret",
            h,
            |n| (NATIVE_KEY.0..=NATIVE_KEY.1).contains(&n),
            "16 to 64 bytes",
        ),
        ("sia_dc09", None) => Ok(Vec::new()),
        ("sia_dc09", Some(h)) => hex_key(
            "secret",
            h,
            |n| DC09_KEYS.contains(&n),
            "an AES key of 16, 24 or 32 bytes",
        ),
        (_, None) => Ok(Vec::new()),
        (p, Some(_)) => Err(format!("secret: {p} devices carry no key; leave it empty")),
    }
}

/// `^[A-Za-z0-9._:-]+$`, at most 32: what [`DeviceId::parse`] takes.
pub fn device_id(field: &str, v: &str) -> Checked<String> {
    too_long(field, v, DeviceId::MAX_LEN)?;
    DeviceId::parse(unanchored(v))
        .map(|d| d.as_str().to_owned())
        .map_err(|e| format!("{field}: {e}"))
}

/// A client's fields as a request gives them, before any check.
#[derive(Debug, Default)]
pub struct ClientInput<'a> {
    pub external_ref: Option<&'a str>,
    pub name: &'a str,
    pub address: &'a str,
    pub district: &'a str,
    pub street: &'a str,
    pub location: Option<(f64, f64)>,
    pub language: Option<&'a str>,
    pub medical_notes: &'a str,
    pub medications: &'a str,
    pub allergies: &'a str,
    pub key_safe: &'a str,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<&'a str>,
}

/// A key-safe code: digits, letters or a short instruction.
const KEY_SAFE_MAX: usize = 64;

pub fn client_entry(i: &ClientInput<'_>) -> Checked<ClientEntry> {
    let location = i
        .location
        .map(|(lat, lon)| location(lat, lon))
        .transpose()?;
    Ok(ClientEntry {
        external_ref: i
            .external_ref
            .map(|r| external_ref("external_ref", r))
            .transpose()?,
        client: NewClient {
            name: required("name", i.name, NAME_MAX)?,
            address: required("address", i.address, ADDRESS_MAX)?,
            district: required("district", i.district, AREA_MAX)?,
            street: required("street", i.street, AREA_MAX)?,
            lat: location.map(|l| l.0),
            lon: location.map(|l| l.1),
            language: match i.language {
                Some(l) => language(l)?,
                None => "zh-CN".into(),
            },
            medical_notes: optional("medical_notes", i.medical_notes, NOTES_MAX)?,
            medications: optional("medications", i.medications, NOTES_MAX)?,
            allergies: optional("allergies", i.allergies, NOTES_MAX)?,
            key_safe: optional("key_safe", i.key_safe, KEY_SAFE_MAX)?,
            birth_year: i
                .birth_year
                .map(|y| within("birth_year", y, BIRTH_YEAR))
                .transpose()?,
            subsidy_category: i
                .subsidy_category
                .map(|c| one_of("subsidy_category", c, &SUBSIDY_CATEGORIES).map(str::to_owned))
                .transpose()?,
        },
    })
}

/// A contact's fields as a request gives them; `prefix` names them in messages
/// (`contacts[2].` or `contact2_`).
#[derive(Debug, Default)]
pub struct ContactInput<'a> {
    pub id: Option<i64>,
    pub name: &'a str,
    pub relation: &'a str,
    pub phone: &'a str,
    pub channel: Option<&'a str>,
    pub address: Option<&'a str>,
}

pub fn contact_entry(prefix: &str, i: &ContactInput<'_>) -> Checked<ContactEntry> {
    let f = |name: &str| format!("{prefix}{name}");
    let notify = match i.channel {
        None => {
            if i.address.is_some_and(|a| !a.is_empty()) {
                return Err(format!("{}: an address needs a channel", f("address")));
            }
            None
        }
        Some(c) => Some(NoticeRoute::parse(c, i.address.unwrap_or("")).map_err(
            |(channel, why)| format!("{}: {why}", f(if channel { "channel" } else { "address" })),
        )?),
    };
    Ok(ContactEntry {
        id: i.id,
        name: required(&f("name"), i.name, NAME_MAX)?,
        relation: optional(&f("relation"), i.relation, RELATION_MAX)?,
        phone: Phone::parse(i.phone).map_err(|why| format!("{}: {why}", f("phone")))?,
        notify,
    })
}

pub fn device_entry(
    id: &str,
    protocol: &str,
    secret: Option<&str>,
    client: ClientRef,
    heartbeat_secs: Option<i64>,
) -> Checked<DeviceEntry> {
    let protocol = one_of("protocol", protocol, &PROTOCOLS)?;
    Ok(DeviceEntry {
        id: device_id("id", id)?,
        protocol: protocol.to_owned(),
        secret: device_secret(protocol, secret)?,
        client,
        heartbeat_secs: heartbeat_secs
            .map(|s| within("heartbeat_secs", s, HEARTBEAT_SECS))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules are `pingantong_domain::reach`'s (tested there); here, that
    /// each is applied and a refusal names the field it came from.
    #[test]
    fn reach_fields_name_themselves() {
        assert_eq!(phone("phone", "120\n").unwrap(), "120");
        assert!(
            phone("contact1_phone", "x")
                .unwrap_err()
                .starts_with("contact1_phone: ")
        );
        let input = |channel, address| ContactInput {
            id: None,
            name: "陈伟",
            relation: "son",
            phone: "13800138000",
            channel,
            address,
        };
        let entry = contact_entry("contact1_", &input(Some("webhook"), Some("https://a.cn/h")));
        assert_eq!(entry.unwrap().notify.unwrap().address(), "https://a.cn/h");
        for (channel, address, field) in [
            (Some("sms"), None, "contact1_channel: "),
            (Some("webhook"), Some("ftp://a/"), "contact1_address: "),
            (Some("email"), Some("a@b"), "contact1_address: "),
            (Some("mqtt"), Some("topic"), "contact1_address: "),
            (None, Some("a@b.cn"), "contact1_address: "),
        ] {
            let err = contact_entry("contact1_", &input(channel, address)).unwrap_err();
            assert!(err.starts_with(field), "{channel:?} {address:?}: {err}");
        }
    }

    #[test]
    fn keys_by_protocol() {
        let hex16 = "00112233445566778899aabbccddeeff";
        assert_eq!(device_secret("native", Some(hex16)).unwrap().len(), 16);
        assert!(device_secret("native", None).is_err());
        assert!(device_secret("native", Some("")).is_err());
        assert!(device_secret("native", Some(&hex16[..30])).is_err());
        assert!(device_secret("native", Some("zz112233445566778899aabbccddeeff")).is_err());
        assert!(device_secret("sia_dc09", None).unwrap().is_empty());
        assert_eq!(
            device_secret("sia_dc09", Some(&hex16.repeat(2)))
                .unwrap()
                .len(),
            32
        );
        assert!(device_secret("sia_dc09", Some(&format!("{hex16}0011"))).is_err());
        assert!(device_secret("gt06", Some(hex16)).is_err());
        assert!(device_secret("gt06", Some("")).unwrap().is_empty());
    }

    #[test]
    fn text_and_tags() {
        assert_eq!(required("name", "  陈秀英 ", NAME_MAX).unwrap(), "陈秀英");
        assert!(required("name", " \t\u{3000}\u{2028}", NAME_MAX).is_err());
        // Text to an ECMA-262 reading of `\S`, so accepted (and kept).
        assert_eq!(required("name", "\u{85}", NAME_MAX).unwrap(), "\u{85}");
        assert_eq!(required("name", " \u{1f} ", NAME_MAX).unwrap(), "\u{1f}");
        assert_eq!(optional("notes", "a\0b", 10).unwrap(), "a\u{fffd}b");
        assert!(optional("notes", &"字".repeat(11), 10).is_err());
        for ok in ["zh-CN", "yue", "en", "zh-Hant-HK"] {
            assert!(language(ok).is_ok(), "{ok}");
        }
        for bad in ["", "z", "zh_CN", "zh-", "toolonglang"] {
            assert!(language(bad).is_err(), "{bad}");
        }
        assert!(external_ref("external_ref", "GZ-YX-000123").is_ok());
        assert!(external_ref("external_ref", "GZ 1").is_err());
        assert!(external_ref("external_ref", "广州1").is_err());
    }
}
