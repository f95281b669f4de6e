//! Who may say what on the broker: MQTT identities and their topics.
//!
//! One set of rules for every broker. The embedded broker's gate checks each
//! CONNECT, PUBLISH and SUBSCRIBE against it; for Mosquitto the same rules are
//! written as dynamic-security roles (`ops/mosquitto.conf`). A username *is* the
//! topic path of what it speaks for (`devices/<id>`, `carers/<id>`), so one
//! pattern per role covers every client and nothing has to be kept per topic.

use pingantong_protocol::DeviceId;

/// An authenticated (or quarantined) MQTT client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A device or gateway with its own credential: its events and acks only.
    Device(DeviceId),
    /// A carer's phone: its own dispatch topic (read) and reply topic (write).
    Carer(i64),
    /// A server (or a monitor run by the operator of the service): everything
    /// under the prefix.
    Server(String),
    /// A Zigbee2MQTT, Tasmota or Shelly bridge: it publishes on the topics of
    /// the configured adapters (`mqtt_adapters`), nothing else. The gate
    /// checks those topics; here it has no topic of its own.
    Bridge(String),
    /// A client without credentials, allowed in only when the deployment says
    /// so: it may raise events under its client id in the quarantine topic
    /// and hear their answers, nothing else. Its events are stored unverified.
    Quarantine(DeviceId),
}

/// Why a username names no one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "MQTT username {0:?} must be devices/<device id>, carers/<carer number>, bridges/<name> or servers/<name>"
)]
pub struct BadUsername(pub String);

impl Principal {
    /// Read a CONNECT's username.
    pub fn from_username(name: &str) -> Result<Self, BadUsername> {
        let bad = || BadUsername(name.to_owned());
        let (kind, id) = name.split_once('/').ok_or_else(bad)?;
        match kind {
            "devices" => DeviceId::parse(id).map(Self::Device).map_err(|_| bad()),
            "carers" => match id.parse::<i64>() {
                // Digits only: "+1" or "01" would name carer 1 under another spelling.
                Ok(n)
                    if n > 0 && id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0') =>
                {
                    Ok(Self::Carer(n))
                }
                _ => Err(bad()),
            },
            // Server names follow the device id rules: no topic wildcards, no slashes.
            "servers" => DeviceId::parse(id)
                .map(|_| Self::Server(id.to_owned()))
                .map_err(|_| bad()),
            "bridges" => DeviceId::parse(id)
                .map(|_| Self::Bridge(id.to_owned()))
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// The username this principal connects with (`None` for a quarantined client).
    pub fn username(&self) -> Option<String> {
        match self {
            Self::Device(d) => Some(format!("devices/{d}")),
            Self::Carer(c) => Some(format!("carers/{c}")),
            Self::Server(s) => Some(format!("servers/{s}")),
            Self::Bridge(b) => Some(format!("bridges/{b}")),
            Self::Quarantine(_) => None,
        }
    }

    /// The topic path its own topics hang under, after `<prefix>/v1/`.
    fn home(&self) -> Option<String> {
        match self {
            Self::Device(d) => Some(format!("devices/{d}")),
            Self::Carer(c) => Some(format!("carers/{c}")),
            Self::Quarantine(d) => Some(format!("quarantine/{d}")),
            Self::Server(_) | Self::Bridge(_) => None,
        }
    }

    /// Whether it may publish to `topic` (a topic name, never a filter).
    pub fn may_publish(&self, prefix: &str, topic: &str) -> bool {
        if topic.contains(['+', '#']) {
            return false;
        }
        let Some(rest) = under_prefix(prefix, topic) else {
            return false;
        };
        match (self, self.home()) {
            (Self::Server(_), _) => true,
            (Self::Carer(_), Some(home)) => rest == format!("{home}/reply"),
            (Self::Device(_) | Self::Quarantine(_), Some(home)) => rest == format!("{home}/events"),
            _ => false,
        }
    }

    /// Whether it may subscribe to `filter`. A filter is granted only when
    /// everything it could match is the principal's to read.
    pub fn may_subscribe(&self, prefix: &str, filter: &str) -> bool {
        // Shared subscriptions split a server's load; nobody else needs one.
        let (shared, filter) = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => (true, f),
                _ => return false,
            },
            None => (false, filter),
        };
        if let Self::Server(_) = self {
            // Anything under the prefix, wildcards and all; `#` alone would
            // also reach other tenants' prefixes and `$SYS`.
            return filter_under_prefix(prefix, filter);
        }
        if shared || filter.contains(['+', '#']) {
            return false;
        }
        let Some(rest) = under_prefix(prefix, filter) else {
            return false;
        };
        match (self, self.home()) {
            (Self::Carer(_), Some(home)) => rest == format!("{home}/dispatch"),
            (Self::Device(_) | Self::Quarantine(_), Some(home)) => rest == format!("{home}/ack"),
            _ => false,
        }
    }
}

/// `topic` minus `<prefix>/v1/`, when it starts so.
fn under_prefix<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    topic.strip_prefix(prefix)?.strip_prefix("/v1/")
}

/// Whether every topic `filter` matches lies under `<prefix>/`: its levels
/// before any wildcard are exactly the prefix's.
fn filter_under_prefix(prefix: &str, filter: &str) -> bool {
    let mut levels = filter.split('/');
    for want in prefix.split('/') {
        match levels.next() {
            Some(l) if l == want => {}
            _ => return false,
        }
    }
    // Something after the prefix, and `#` only as the last level.
    let rest: Vec<&str> = levels.collect();
    !rest.is_empty()
        && rest.iter().enumerate().all(|(i, l)| {
            (*l == "#" && i == rest.len() - 1) || *l == "+" || !l.contains(['+', '#'])
        })
}

/// Client ids under which a client other than a server may not connect: the
/// server's own, so a stranger cannot take over its session.
pub fn reserved_client_id(client_id: &str, server_ids: &[&str]) -> bool {
    server_ids.contains(&client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "pat";

    fn device(id: &str) -> Principal {
        Principal::Device(DeviceId::parse(id).unwrap())
    }

    #[test]
    fn usernames_name_one_principal_each() {
        assert_eq!(
            Principal::from_username("devices/D-1").unwrap(),
            device("D-1")
        );
        assert_eq!(
            Principal::from_username("carers/7").unwrap(),
            Principal::Carer(7)
        );
        assert_eq!(
            Principal::from_username("servers/pingantong-1").unwrap(),
            Principal::Server("pingantong-1".into())
        );
        for bad in [
            "",
            "D-1",
            "devices/",
            "devices/a/b",
            "devices/+",
            "devices/#",
            "carers/0",
            "carers/-1",
            "carers/+1",
            "carers/01",
            "carers/x",
            "servers/",
            "servers/#",
            "admins/1",
        ] {
            assert!(Principal::from_username(bad).is_err(), "{bad:?} refused");
        }
        for p in [
            device("D-1"),
            Principal::Carer(7),
            Principal::Server("s".into()),
            Principal::Bridge("z2m".into()),
        ] {
            assert_eq!(Principal::from_username(&p.username().unwrap()).unwrap(), p);
        }
    }

    #[test]
    fn a_device_speaks_only_for_itself() {
        let d = device("D-1");
        assert!(d.may_publish(P, "pat/v1/devices/D-1/events"));
        assert!(!d.may_publish(P, "pat/v1/devices/D-2/events"));
        assert!(
            !d.may_publish(P, "pat/v1/devices/D-1/ack"),
            "forging its own ack"
        );
        assert!(!d.may_publish(P, "pat/v1/carers/1/reply"));
        assert!(!d.may_publish(P, "pat/v1/quarantine/D-1/events"));
        assert!(!d.may_publish(P, "other/v1/devices/D-1/events"));
        assert!(!d.may_publish(P, "pat/v1/server/pingantong-1/status"));
        assert!(d.may_subscribe(P, "pat/v1/devices/D-1/ack"));
        for f in [
            "#",
            "pat/#",
            "pat/v1/devices/+/ack",
            "pat/v1/devices/D-1/#",
            "pat/v1/devices/D-2/ack",
            "pat/v1/devices/D-1/events",
            "$share/g/pat/v1/devices/D-1/ack",
            "$SYS/#",
        ] {
            assert!(!d.may_subscribe(P, f), "{f}");
        }
    }

    #[test]
    fn a_carer_reads_its_own_dispatches_and_answers_only_them() {
        let c = Principal::Carer(1);
        assert!(c.may_subscribe(P, "pat/v1/carers/1/dispatch"));
        assert!(!c.may_subscribe(P, "pat/v1/carers/2/dispatch"));
        assert!(!c.may_subscribe(P, "pat/v1/carers/+/dispatch"));
        assert!(!c.may_subscribe(P, "pat/v1/carers/1/reply"));
        assert!(c.may_publish(P, "pat/v1/carers/1/reply"));
        assert!(!c.may_publish(P, "pat/v1/carers/2/reply"));
        assert!(
            !c.may_publish(P, "pat/v1/carers/1/dispatch"),
            "forging an offer"
        );
        assert!(!c.may_publish(P, "pat/v1/devices/D-1/events"));
    }

    #[test]
    fn a_quarantined_client_raises_events_under_its_client_id_only() {
        let q = Principal::Quarantine(DeviceId::parse("X-9").unwrap());
        assert!(q.may_publish(P, "pat/v1/quarantine/X-9/events"));
        assert!(q.may_subscribe(P, "pat/v1/quarantine/X-9/ack"));
        assert!(!q.may_publish(P, "pat/v1/quarantine/X-8/events"));
        assert!(!q.may_publish(P, "pat/v1/devices/X-9/events"));
        assert!(!q.may_publish(P, "pat/v1/carers/1/reply"));
        assert!(!q.may_subscribe(P, "pat/v1/quarantine/+/ack"));
        assert!(!q.may_subscribe(P, "#"));
        assert!(!q.may_subscribe(P, "pat/v1/carers/1/dispatch"));
    }

    #[test]
    fn a_server_has_its_prefix_and_nothing_beyond() {
        let s = Principal::Server("a".into());
        assert!(s.may_publish(P, "pat/v1/carers/1/dispatch"));
        assert!(s.may_publish(P, "pat/v1/devices/D-1/ack"));
        assert!(!s.may_publish(P, "other/v1/carers/1/dispatch"));
        assert!(!s.may_publish(P, "pat/v1/devices/+/ack"));
        for f in [
            "pat/#",
            "pat/v1/devices/+/events",
            "$share/g/pat/v1/carers/+/reply",
            "pat/+/x",
        ] {
            assert!(s.may_subscribe(P, f), "{f}");
        }
        for f in [
            "#",
            "+/v1/#",
            "$SYS/#",
            "pat",
            "pat/#/x",
            "pat/v1/a#",
            "$share//pat/#",
            "patx/#",
        ] {
            assert!(!s.may_subscribe(P, f), "{f}");
        }
        // A prefix with levels of its own.
        assert!(s.may_subscribe("city/pat", "city/pat/v1/#"));
        assert!(!s.may_subscribe("city/pat", "city/+/v1/#"));
    }

    #[test]
    fn a_bridge_has_no_topic_of_its_own_under_the_prefix() {
        let b = Principal::Bridge("z2m".into());
        assert!(!b.may_publish(P, "pat/v1/devices/D-1/events"));
        assert!(!b.may_subscribe(P, "pat/#"));
        assert!(!b.may_subscribe(P, "pat/v1/carers/1/dispatch"));
    }

    #[test]
    fn server_client_ids_are_reserved() {
        assert!(reserved_client_id("pingantong-1", &["pingantong-1"]));
        assert!(!reserved_client_id("D-1", &["pingantong-1"]));
    }
}
