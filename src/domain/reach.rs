//! How a person is reached: a phone number, an e-mail address, a webhook.
//!
//! Each is a type whose only way in is its parse, so a value held is a value
//! checked: the registry's endpoints and its CSV import parse at the edge,
//! and what is stored, listed and dialled is the same text. The rules match
//! the patterns the OpenAPI document states for these fields (a pattern
//! ending in `$` also matches before one final newline, so that one newline
//! is dropped, not refused).

use std::fmt;

pub const PHONE_MIN: usize = 3;
pub const PHONE_MAX: usize = 32;
pub const URL_MAX: usize = 500;
pub const EMAIL_MAX: usize = 254;

/// The value a pattern ending in `$` judges: without one final newline.
fn unanchored(v: &str) -> &str {
    v.strip_suffix('\n').unwrap_or(v)
}

fn at_most(v: &str, max: usize) -> Result<(), String> {
    if v.chars().count() > max {
        return Err(format!("at most {max} characters"));
    }
    Ok(())
}

/// One host name label: letters, digits, inner hyphens.
fn label(l: &str) -> bool {
    !l.is_empty()
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn host(h: &str) -> bool {
    h.split('.').all(label)
}

/// A port, 0 to 65535, as the document's pattern spells it (no leading zeros).
fn port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && (p == "0" || !p.starts_with('0'))
        && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
}

macro_rules! text_type {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(v: String) -> Result<Self, String> {
                Self::parse(&v)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(v: &str) -> Result<Self, String> {
                Self::parse(v)
            }
        }
    };
}

/// `^\+?[0-9]+([ -][0-9]+)*$`, 3 to 32 characters: `13800138000`,
/// `+86 138 0013 8000`, `020-8888 1234`, `120`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(v: &str) -> Result<Self, String> {
        let n = v.chars().count();
        if !(PHONE_MIN..=PHONE_MAX).contains(&n) {
            return Err(format!("{PHONE_MIN} to {PHONE_MAX} characters"));
        }
        let s = unanchored(v);
        let digits = s.strip_prefix('+').unwrap_or(s);
        let ok = !digits.is_empty()
            && digits
                .split([' ', '-'])
                .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(
                "digits, optionally starting with + and grouped by single spaces or hyphens \
                 (e.g. 13800138000, +86 138 0013 8000, 020-8888 1234)"
                    .into(),
            );
        }
        Ok(Self(s.to_owned()))
    }
}
text_type!(Phone);

/// An `http://` or `https://` URL: a host name or IPv4 address, an optional
/// port, an optional path of printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(v: &str) -> Result<Self, String> {
        at_most(v, URL_MAX)?;
        let s = unanchored(v);
        let bad = || "an http:// or https:// URL (host name or IPv4 address, no spaces)".to_owned();
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or_else(bad)?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (h, p) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let ok = host(h) && p.is_none_or(port) && path.bytes().all(|b| (b'!'..=b'~').contains(&b));
        if !ok {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}
text_type!(WebhookUrl);

/// `local@domain`: a dot-separated local part of letters, digits and
/// `_ % + -`, a domain of at least two labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(v: &str) -> Result<Self, String> {
        at_most(v, EMAIL_MAX)?;
        let s = unanchored(v);
        let bad = || "an e-mail address such as name@example.cn".to_owned();
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let local_ok = local.split('.').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'%' | b'+' | b'-'))
        });
        if !(local_ok && domain.contains('.') && host(domain)) {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}
text_type!(Email);

/// How a contact hears of an alarm besides a telephone call: on the family
/// app (MQTT, whose topic is the contact's id: no address), a webhook, or
/// an e-mail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NoticeRoute {
    Mqtt,
    Webhook(WebhookUrl),
    Email(Email),
}

impl NoticeRoute {
    /// Every channel's name, as stored and taken.
    pub const CHANNELS: [&'static str; 3] = ["mqtt", "webhook", "email"];

    /// A channel by name with its address. The error says which part is
    /// wrong: `Err((true, why))` the channel, `Err((false, why))` the address.
    pub fn parse(channel: &str, address: &str) -> Result<Self, (bool, String)> {
        match channel {
            "mqtt" if address.is_empty() => Ok(NoticeRoute::Mqtt),
            "mqtt" => Err((
                false,
                "an MQTT contact has no address (the topic is the contact's id)".into(),
            )),
            "webhook" => WebhookUrl::parse(address)
                .map(NoticeRoute::Webhook)
                .map_err(|why| (false, why)),
            "email" => Email::parse(address)
                .map(NoticeRoute::Email)
                .map_err(|why| (false, why)),
            _ => Err((true, format!("one of {}", Self::CHANNELS.join(", ")))),
        }
    }

    /// The channel's name, as stored.
    pub fn channel(&self) -> &'static str {
        match self {
            NoticeRoute::Mqtt => "mqtt",
            NoticeRoute::Webhook(_) => "webhook",
            NoticeRoute::Email(_) => "email",
        }
    }

    /// Where the notice goes; empty for MQTT.
    pub fn address(&self) -> &str {
        match self {
            NoticeRoute::Mqtt => "",
            NoticeRoute::Webhook(u) => u.as_str(),
            NoticeRoute::Email(e) => e.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        for ok in [
            "13800138000",
            "+86 138 0013 8000",
            "020-8888 1234",
            "110",
            "120\n",
        ] {
            assert!(Phone::parse(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(Phone::parse("120\n").unwrap().as_str(), "120");
        for bad in [
            "",
            "12",
            "+",
            "abc",
            "138 ",
            " 138",
            "138--1",
            "(020) 8888",
            "1\n\n",
            "+-1",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Phone::parse(&"1".repeat(33)).is_err());
    }

    #[test]
    fn urls_and_addresses() {
        for ok in [
            "https://family.example.cn/hook",
            "http://127.0.0.1:8080/family",
            "http://a",
            "https://a.b:65535/x?y=1#z",
        ] {
            assert!(WebhookUrl::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "ftp://a/",
            "http://",
            "http://a:65536/",
            "http://a:080/",
            "http://a b/",
            "http://-a/",
            "http://a..b/",
            "https://a/ x",
            "http://[::1]/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["li.ming@example.cn", "a+b@x-y.com.cn", "A_1%@B.CN"] {
            assert!(Email::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "a@b",
            "a..b@x.cn",
            ".a@x.cn",
            "a@-x.cn",
            "a b@x.cn",
            "@x.cn",
            "a@x.cn.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Read from JSON or TOML, a value goes through its parse: a wrong one
    /// is refused there, not carried in.
    #[test]
    fn deserialising_parses() {
        let ok: Phone = serde_json::from_str(r#""+86 138 0013 8000""#).unwrap();
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#""+86 138 0013 8000""#
        );
        let err = serde_json::from_str::<Phone>(r#""call me""#).unwrap_err();
        assert!(err.to_string().contains("digits"), "{err}");
        assert!(serde_json::from_str::<Email>(r#""a@b""#).is_err());
        assert!(serde_json::from_str::<WebhookUrl>(r#""ftp://x/""#).is_err());
    }

    #[test]
    fn notice_routes() {
        assert_eq!(NoticeRoute::parse("mqtt", ""), Ok(NoticeRoute::Mqtt));
        assert!(matches!(NoticeRoute::parse("mqtt", "x"), Err((false, _))));
        let hook = NoticeRoute::parse("webhook", "https://a.cn/h").unwrap();
        assert_eq!(
            (hook.channel(), hook.address()),
            ("webhook", "https://a.cn/h")
        );
        assert!(matches!(
            NoticeRoute::parse("email", "a@b"),
            Err((false, _))
        ));
        assert!(matches!(NoticeRoute::parse("sms", ""), Err((true, _))));
    }
}
