//! Adapters for what real homes already have on MQTT: Zigbee2MQTT SOS
//! buttons, Tasmota buttons and Shelly inputs, each mapped to a provisioned
//! device by a configuration table (protocol/MQTT.md, "Adapters").

use pingantong_protocol::EventKind;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// `zigbee2mqtt/<friendly name>` with `{"action": "emergency", "battery": 87, …}`.
    Zigbee2mqtt,
    /// `stat/<topic>/BUTTON<n>` with `{"ACTION": "SINGLE"}`.
    Tasmota,
    /// `<device id>/events/rpc` with Gen2 `NotifyEvent` (`single_push`, `long_push`, …).
    Shelly,
}

impl AdapterKind {
    /// The device protocol name such a device is provisioned with.
    pub fn protocol(self) -> &'static str {
        match self {
            AdapterKind::Zigbee2mqtt => "zigbee2mqtt",
            AdapterKind::Tasmota => "tasmota",
            AdapterKind::Shelly => "shelly",
        }
    }

    /// Presses that mean SOS when the table does not say.
    fn default_sos_actions(self) -> &'static [&'static str] {
        match self {
            AdapterKind::Zigbee2mqtt => &["emergency", "sos", "panic"],
            // A Tasmota or Shelly button installed as an alarm button: any press.
            AdapterKind::Tasmota => &["SINGLE", "DOUBLE", "TRIPLE", "QUAD", "PENTA", "HOLD"],
            AdapterKind::Shelly => &["single_push", "double_push", "triple_push", "long_push"],
        }
    }
}

/// One row of the adapter table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub kind: AdapterKind,
    /// Zigbee2MQTT friendly name, Tasmota topic, or Shelly device id.
    pub source: String,
    /// The device id it is provisioned as.
    pub device: String,
    /// Actions that raise an SOS; others only show the device is alive.
    pub sos_actions: Option<Vec<String>>,
}

/// What one adapter message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub kind: EventKind,
    pub battery: Option<u8>,
    /// The adapter's own words, kept with the event.
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("payload is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("payload has no action or event this adapter understands")]
    Shape,
}

impl AdapterConfig {
    /// The topic filter this row subscribes to.
    pub fn filter(&self) -> String {
        match self.kind {
            AdapterKind::Zigbee2mqtt => format!("zigbee2mqtt/{}", self.source),
            AdapterKind::Tasmota => format!("stat/{}/+", self.source),
            AdapterKind::Shelly => format!("{}/events/rpc", self.source),
        }
    }

    /// Whether `topic` is one of this row's.
    pub fn matches(&self, topic: &str) -> bool {
        match self.kind {
            AdapterKind::Zigbee2mqtt => topic == self.filter(),
            AdapterKind::Tasmota => topic
                .strip_prefix("stat/")
                .and_then(|t| t.strip_prefix(self.source.as_str()))
                .and_then(|t| t.strip_prefix("/BUTTON"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            AdapterKind::Shelly => topic == self.filter(),
        }
    }

    fn is_sos(&self, action: &str) -> bool {
        match &self.sos_actions {
            Some(list) => list.iter().any(|a| a == action),
            None => self.kind.default_sos_actions().contains(&action),
        }
    }

    /// Map one message. `Ok(None)`: a message that reports nothing (a Shelly status).
    pub fn map(&self, topic: &str, payload: &[u8]) -> Result<Option<Mapped>, AdapterError> {
        let v: serde_json::Value = serde_json::from_slice(payload)?;
        let (action, battery) = match self.kind {
            AdapterKind::Zigbee2mqtt => (
                v["action"].as_str().map(str::to_owned),
                v["battery"].as_u64().map(|b| b.min(100) as u8),
            ),
            AdapterKind::Tasmota => {
                let a = v["ACTION"].as_str().ok_or(AdapterError::Shape)?;
                (Some(a.to_owned()), None)
            }
            AdapterKind::Shelly => {
                if v["method"] != "NotifyEvent" {
                    return Ok(None);
                }
                let events = v["params"]["events"]
                    .as_array()
                    .ok_or(AdapterError::Shape)?;
                // The most urgent event in the batch decides.
                let pick = events
                    .iter()
                    .filter_map(|e| e["event"].as_str())
                    .max_by_key(|e| self.is_sos(e));
                (Some(pick.ok_or(AdapterError::Shape)?.to_owned()), None)
            }
        };
        let code = format!(
            "{} {} {}",
            self.kind.protocol(),
            topic,
            action.as_deref().unwrap_or("state")
        );
        let kind = match action.as_deref() {
            Some(a) if self.is_sos(a) => EventKind::Sos,
            // Any other message still shows the device is alive.
            _ => EventKind::Heartbeat,
        };
        Ok(Some(Mapped {
            kind,
            battery,
            code,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: AdapterKind, source: &str) -> AdapterConfig {
        AdapterConfig {
            kind,
            source: source.into(),
            device: "D1".into(),
            sos_actions: None,
        }
    }

    #[test]
    fn zigbee2mqtt_emergency_is_sos_and_battery_is_kept() {
        let r = row(AdapterKind::Zigbee2mqtt, "hall_sos");
        assert_eq!(r.filter(), "zigbee2mqtt/hall_sos");
        let m = r
            .map(
                "zigbee2mqtt/hall_sos",
                br#"{"action":"emergency","battery":87,"linkquality":120}"#,
            )
            .unwrap()
            .unwrap();
        assert_eq!((m.kind, m.battery), (EventKind::Sos, Some(87)));
        let m = r
            .map("zigbee2mqtt/hall_sos", br#"{"battery":40}"#)
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, EventKind::Heartbeat);
        let custom = AdapterConfig {
            sos_actions: Some(vec!["single".into()]),
            ..r
        };
        let m = custom
            .map("zigbee2mqtt/hall_sos", br#"{"action":"single"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, EventKind::Sos);
    }

    #[test]
    fn tasmota_button_topics_and_actions() {
        let r = row(AdapterKind::Tasmota, "tasmota_5A1B");
        assert!(r.matches("stat/tasmota_5A1B/BUTTON1"));
        assert!(r.matches("stat/tasmota_5A1B/BUTTON12"));
        assert!(!r.matches("stat/tasmota_5A1B/RESULT"));
        assert!(!r.matches("stat/tasmota_5A1BX/BUTTON1"));
        let m = r
            .map("stat/tasmota_5A1B/BUTTON1", br#"{"ACTION":"SINGLE"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, EventKind::Sos);
        assert!(
            r.map("stat/tasmota_5A1B/BUTTON1", br#"{"POWER":"ON"}"#)
                .is_err()
        );
    }

    #[test]
    fn shelly_notify_event_and_status() {
        let r = row(AdapterKind::Shelly, "shellyplusi4-c4d8d5");
        let ev = br#"{"src":"shellyplusi4-c4d8d5","dst":"x","method":"NotifyEvent","params":{"ts":1631266595.43,"events":[{"component":"input:0","id":0,"event":"btn_down","ts":1631266595.43},{"component":"input:0","id":0,"event":"single_push","ts":1631266595.43}]}}"#;
        let m = r
            .map("shellyplusi4-c4d8d5/events/rpc", ev)
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, EventKind::Sos);
        assert!(m.code.contains("single_push"));
        let status = br#"{"method":"NotifyStatus","params":{}}"#;
        assert_eq!(
            r.map("shellyplusi4-c4d8d5/events/rpc", status).unwrap(),
            None
        );
        assert!(
            r.map("shellyplusi4-c4d8d5/events/rpc", b"not json")
                .is_err()
        );
    }
}
