//! Mosquitto in step with the registry, through its dynamic-security plugin.
//!
//! Why the plugin and not password and ACL files: it is driven over MQTT
//! (`$CONTROL/dynamic-security/v1`), so the server needs no shell on the
//! broker's host, a change applies at once, and deleting a client ends its
//! connection. Mosquitto 2.0 does not substitute `%u` in the plugin's ACLs,
//! so each credential gets a role of its own with its literal topics
//! (`pingantong:<username>`), made from the same rules as the embedded
//! broker's gate (`acl`).
//!
//! The server pushes a credential once per change: the registry remembers the
//! generation the broker was told of, so a restart pushes nothing and kicks
//! nobody. `pingantong mqtt-credential resync` makes it push everything again.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mqtt::MqttStatus;
use crate::mqtt::acl::Principal;
use crate::mqtt::credential::CredentialKey;
pub use crate::mqtt::{DYNSEC_COMMANDS as COMMANDS, DYNSEC_RESPONSES as RESPONSES};
use pingantong_store::{CredentialRow, Db};
use pingantong_telemetry::events;

/// How often the registry is looked at for changes.
const SWEEP: Duration = Duration::from_secs(2);
/// At most this many credentials in one sweep (a city's first push takes several).
const BATCH: usize = 200;
/// A push not confirmed within this is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(10);

/// What the rules depend on.
#[derive(Debug, Clone)]
pub struct DynsecConfig {
    pub prefix: String,
    /// The bridges' topics (the adapters' filters).
    pub adapter_filters: Vec<String>,
    /// Give clients without credentials the quarantine topics (the broker's
    /// `allow_anonymous` decides whether they get in at all).
    pub quarantine: bool,
    /// The account the server logs in with: the plugin's administrator, given
    /// the servers' role.
    pub server_username: String,
}

fn role_of(username: &str) -> String {
    format!("pingantong:{username}")
}

fn acl(kind: &str, topic: &str) -> Value {
    json!({"acltype": kind, "topic": topic, "allow": true})
}

/// A principal's ACLs, literal (Mosquitto 2.0 substitutes nothing).
pub fn acls(p: &Principal, cfg: &DynsecConfig) -> Vec<Value> {
    let v1 = format!("{}/v1", cfg.prefix);
    match p {
        Principal::Device(d) => vec![
            acl("publishClientSend", &format!("{v1}/devices/{d}/events")),
            acl("subscribeLiteral", &format!("{v1}/devices/{d}/ack")),
        ],
        Principal::Carer(c) => vec![
            acl("publishClientSend", &format!("{v1}/carers/{c}/reply")),
            acl("subscribeLiteral", &format!("{v1}/carers/{c}/dispatch")),
        ],
        Principal::Bridge(_) => cfg
            .adapter_filters
            .iter()
            .map(|f| acl("publishClientSend", f))
            .collect(),
        Principal::Server(_) => vec![
            acl("publishClientSend", &format!("{}/#", cfg.prefix)),
            acl("subscribePattern", &format!("{}/#", cfg.prefix)),
        ],
        Principal::Quarantine(_) => Vec::new(),
    }
}

/// The commands that make the broker hold `row` as the registry does: any
/// old client and role go (ending its connections), a live one comes back
/// with its current password.
pub fn commands(row: &CredentialRow, cfg: &DynsecConfig, key: &CredentialKey) -> Vec<Value> {
    let role = role_of(&row.username);
    let mut out = vec![
        json!({"command": "deleteClient", "username": row.username}),
        json!({"command": "deleteRole", "rolename": role}),
    ];
    if row.revoked {
        return out;
    }
    let Ok(p) = Principal::from_username(&row.username) else {
        return out;
    };
    out.push(json!({"command": "createRole", "rolename": role, "acls": acls(&p, cfg)}));
    out.push(json!({
        "command": "createClient",
        "username": row.username,
        "password": key.password(&row.username, row.generation),
        "roles": [{"rolename": role}],
        "correlationData": row.username,
    }));
    out
}

/// Roles every deployment needs: the server's own (added to the account the
/// server logs in with) and the quarantine's, given to clients without credentials.
pub fn base_commands(cfg: &DynsecConfig, server_username: &str) -> Vec<Value> {
    let server = role_of("servers");
    let mut out = vec![
        json!({"command": "createRole", "rolename": server,
               "acls": acls(&Principal::Server(String::new()), cfg)}),
        json!({"command": "addClientRole", "username": server_username, "rolename": server}),
    ];
    if cfg.quarantine {
        let v1 = format!("{}/v1", cfg.prefix);
        // 2.0 cannot tie these to the client id: strangers share the quarantine.
        out.push(
            json!({"command": "createRole", "rolename": role_of("quarantine"), "acls": [
                acl("publishClientSend", &format!("{v1}/quarantine/+/events")),
                acl("subscribePattern", &format!("{v1}/quarantine/+/ack")),
            ]}),
        );
        out.push(
            json!({"command": "createGroup", "groupname": role_of("anonymous"),
                        "roles": [{"rolename": role_of("quarantine")}]}),
        );
        out.push(json!({"command": "setAnonymousGroup", "groupname": role_of("anonymous")}));
    }
    out
}

/// Which credentials a broker's answer confirms: those whose `createClient`
/// (or, revoked, `deleteClient`) went through. An answer names its
/// credential by the `correlationData` the command carried.
pub fn confirmed(response: &Value) -> Vec<(String, bool)> {
    let Some(list) = response["responses"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|r| {
            let who = r["correlationData"].as_str()?.to_owned();
            let ok = r.get("error").is_none_or(|e| e.is_null())
                || (r["command"] == "deleteClient" && r["error"] == "Client not found");
            Some((who, ok))
        })
        .collect()
}

/// Push the registry's credentials to the broker until `shutdown`.
pub async fn run(
    db: Db,
    key: CredentialKey,
    cfg: DynsecConfig,
    client: AsyncClient,
    status: MqttStatus,
    mut responses: mpsc::Receiver<Publish>,
    shutdown: CancellationToken,
) {
    let base = json!({"commands": base_commands(&cfg, &cfg.server_username)}).to_string();
    let mut base_sent = false;
    // Sent and not yet confirmed: username -> the row as sent, and when.
    let mut pending: HashMap<String, (CredentialRow, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(p) = responses.recv() => {
                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                for (who, ok) in confirmed(&v) {
                    let Some((row, _)) = pending.remove(&who) else { continue };
                    if ok {
                        if let Err(e) = db.mark_mqtt_credential_synced(&row).await {
                            events::StageFailed { stage: "mqtt_dynsec", error: &e }.emit();
                        }
                    } else {
                        let e = format!("broker refused {who}: {}", v);
                        events::StageFailed { stage: "mqtt_dynsec", error: &e }.emit();
                    }
                }
            }
            _ = tick.tick() => {
                // Only while connected, and never queued behind the link's
                // own messages: an outage must not fill its queue with
                // commands that would delay the ACKs and offers after it.
                if !status.is_up() {
                    continue;
                }
                if !base_sent {
                    base_sent = client
                        .try_publish(COMMANDS, QoS::AtLeastOnce, false, base.clone())
                        .is_ok();
                }
                let rows = match db.mqtt_credentials_unsynced().await {
                    Ok(rows) => rows,
                    Err(e) => {
                        events::StageFailed { stage: "mqtt_dynsec", error: &e }.emit();
                        continue;
                    }
                };
                // Sent again if no answer came in time (the broker was
                // away): the commands are safe to repeat.
                let now = Instant::now();
                pending.retain(|_, (_, at)| now.duration_since(*at) < RESEND_AFTER);
                let due: Vec<CredentialRow> = rows
                    .into_iter()
                    .filter(|r| !pending.contains_key(&r.username))
                    .take(BATCH)
                    .collect();
                for row in due {
                    let mut cmds = commands(&row, &cfg, &key);
                    if row.revoked && let Some(first) = cmds.first_mut() {
                        first["correlationData"] = json!(row.username);
                    }
                    let body = json!({"commands": cmds}).to_string();
                    if client.try_publish(COMMANDS, QoS::AtLeastOnce, false, body).is_err() {
                        break;
                    }
                    pending.insert(row.username.clone(), (row, now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DynsecConfig {
        DynsecConfig {
            prefix: "pat".into(),
            adapter_filters: vec!["zigbee2mqtt/hall".into()],
            quarantine: true,
            server_username: "servers/a".into(),
        }
    }

    fn row(username: &str, generation: i64, revoked: bool) -> CredentialRow {
        CredentialRow {
            username: username.into(),
            generation,
            revoked,
        }
    }

    #[test]
    fn a_live_credential_is_made_anew_with_its_own_literal_topics() {
        let key = CredentialKey::new("k");
        let c = commands(&row("devices/D-1", 3, false), &cfg(), &key);
        let names: Vec<&str> = c.iter().map(|c| c["command"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["deleteClient", "deleteRole", "createRole", "createClient"]
        );
        assert_eq!(
            c[2]["acls"],
            json!([
                {"acltype": "publishClientSend", "topic": "pat/v1/devices/D-1/events", "allow": true},
                {"acltype": "subscribeLiteral", "topic": "pat/v1/devices/D-1/ack", "allow": true},
            ])
        );
        assert_eq!(c[3]["password"], key.password("devices/D-1", 3));
        assert_eq!(c[3]["roles"][0]["rolename"], "pingantong:devices/D-1");
        assert_eq!(c[3]["correlationData"], "devices/D-1");
        let carer = commands(&row("carers/7", 1, false), &cfg(), &key);
        assert_eq!(carer[2]["acls"][1]["topic"], "pat/v1/carers/7/dispatch");
        let bridge = commands(&row("bridges/z", 1, false), &cfg(), &key);
        assert_eq!(bridge[2]["acls"][0]["topic"], "zigbee2mqtt/hall");
    }

    #[test]
    fn a_revoked_credential_is_only_removed() {
        let c = commands(&row("carers/7", 2, true), &cfg(), &CredentialKey::new("k"));
        let names: Vec<&str> = c.iter().map(|c| c["command"].as_str().unwrap()).collect();
        assert_eq!(names, ["deleteClient", "deleteRole"]);
    }

    #[test]
    fn answers_confirm_by_correlation() {
        let v = json!({"responses": [
            {"command": "deleteClient", "error": "Client not found"},
            {"command": "createClient", "correlationData": "devices/A"},
            {"command": "createClient", "correlationData": "devices/B", "error": "Role not found"},
            {"command": "deleteClient", "correlationData": "carers/1", "error": "Client not found"},
        ]});
        assert_eq!(
            confirmed(&v),
            [
                ("devices/A".to_owned(), true),
                ("devices/B".to_owned(), false),
                ("carers/1".to_owned(), true)
            ]
        );
        assert!(confirmed(&json!({"x": 1})).is_empty());
    }

    #[test]
    fn the_quarantine_is_optional() {
        let with = base_commands(&cfg(), "servers/a");
        assert!(with.iter().any(|c| c["command"] == "setAnonymousGroup"));
        let without = base_commands(
            &DynsecConfig {
                quarantine: false,
                ..cfg()
            },
            "servers/a",
        );
        assert!(without.iter().all(|c| c["command"] != "setAnonymousGroup"));
        assert_eq!(without[1]["username"], "servers/a");
    }
}
