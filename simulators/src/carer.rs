//! Simulated carers: one MQTT client that receives every carer's dispatch
//! offers and, if told how, answers them as carers would (protocol/MQTT.md).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde::Deserialize;

#[derive(Debug, Default)]
pub struct CarerStats {
    pub subscribed: AtomicBool,
    pub offers: AtomicU64,
    pub accepted: AtomicU64,
    pub declined: AtomicU64,
    pub arrived: AtomicU64,
    pub completed: AtomicU64,
    /// Offers taken back because their incident ended.
    pub withdrawn: AtomicU64,
    received: Mutex<Vec<Offer>>,
    /// The health details sent to a carer who accepted.
    details: Mutex<Vec<Details>>,
}

/// How simulated carers answer offers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub accept_after: Duration,
    pub arrive_after: Duration,
    pub complete_after: Duration,
    /// Every n-th offer is declined (0: none).
    pub decline_every: u64,
}

impl CarerStats {
    /// Distinct dispatches offered (an offer sent twice counts once).
    pub fn distinct_dispatches(&self) -> usize {
        let log = self.received.lock().expect("not poisoned");
        log.iter()
            .map(|o| o.dispatch_id)
            .collect::<HashSet<_>>()
            .len()
    }

    /// Every offer received, in order.
    pub fn offers(&self) -> Vec<Offer> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// Every `details` message received (sent once a carer accepted), in order.
    pub fn details(&self) -> Vec<Details> {
        self.details.lock().expect("not poisoned").clone()
    }
}

/// What the carer who accepted is told beyond the offer.
#[derive(Debug, Clone, Deserialize)]
pub struct Details {
    pub dispatch_id: i64,
    pub carer_id: i64,
    pub medical_notes: String,
    pub medications: String,
    #[serde(default)]
    pub allergies: String,
    #[serde(default)]
    pub key_safe: String,
}

/// The fields of an offer a carer's phone relies on.
#[derive(Debug, Clone, Deserialize)]
pub struct Offer {
    pub v: u32,
    pub dispatch_id: i64,
    pub incident_id: i64,
    pub carer_id: i64,
    pub kind: String,
    pub client_name: String,
    pub address: String,
}

/// What a message on a carer's dispatch topic is: `offer`, `withdrawn` or `details`.
#[derive(Deserialize)]
struct MessageType {
    r#type: Option<String>,
}

/// Subscribe to `{prefix}/v1/carers/+/dispatch` on the broker and count offers
/// until the returned task is aborted.
pub fn spawn(
    host: &str,
    port: u16,
    prefix: &str,
    client_id: &str,
    stats: Arc<CarerStats>,
    behaviour: Option<Behaviour>,
    login: Option<(String, String)>,
) -> tokio::task::JoinHandle<()> {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    // It answers for every carer at once, so it needs a server's credential
    // (a real phone has its carer's own, which reads only its own topic).
    if let Some((user, pass)) = login {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let filter = format!("{prefix}/v1/carers/+/dispatch");
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // No persistent session: subscribe again on every connect.
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    stats.subscribed.store(true, Ordering::Release);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // The same topic carries withdrawals (`"type": "withdrawn"`);
                    // a message without a type is an offer (older servers).
                    let kind = serde_json::from_slice::<MessageType>(&p.payload)
                        .ok()
                        .and_then(|m| m.r#type);
                    if kind.as_deref() == Some("withdrawn") {
                        stats.withdrawn.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // After an accept: the resident's health, for this carer only.
                    if kind.as_deref() == Some("details") {
                        if let Ok(d) = serde_json::from_slice::<Details>(&p.payload) {
                            stats.details.lock().expect("not poisoned").push(d);
                        }
                        continue;
                    }
                    if kind.as_deref().is_some_and(|k| k != "offer") {
                        continue; // a message this phone does not know
                    }
                    if let Ok(offer) = serde_json::from_slice::<Offer>(&p.payload) {
                        let n = stats.offers.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Some(b) = &behaviour {
                            let topic = format!("{prefix}/v1/carers/{}/reply", offer.carer_id);
                            tokio::spawn(answer(
                                client.clone(),
                                topic,
                                offer.dispatch_id,
                                b.clone(),
                                n,
                                Arc::clone(&stats),
                            ));
                        }
                        stats.received.lock().expect("not poisoned").push(offer);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    stats.subscribed.store(false, Ordering::Release);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// One carer's answers to one offer, with the configured pauses.
async fn answer(
    client: AsyncClient,
    topic: String,
    dispatch_id: i64,
    b: Behaviour,
    n: u64,
    stats: Arc<CarerStats>,
) {
    let say = |action: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({"v": 1, "dispatch_id": dispatch_id, "action": action});
        if let (Some(o), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        body.to_string()
    };
    tokio::time::sleep(b.accept_after).await;
    if b.decline_every > 0 && n.is_multiple_of(b.decline_every) {
        let body = say(
            "decline",
            serde_json::json!({"reason": "already with another client"}),
        );
        if client
            .publish(&topic, QoS::AtLeastOnce, false, body)
            .await
            .is_ok()
        {
            stats.declined.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let steps = [
        ("accept", Duration::ZERO, &stats.accepted),
        ("arrived", b.arrive_after, &stats.arrived),
        ("completed", b.complete_after, &stats.completed),
    ];
    for (action, pause, counter) in steps {
        tokio::time::sleep(pause).await;
        let extra = if action == "completed" {
            serde_json::json!({"outcome": "assisted_no_injury"})
        } else {
            serde_json::json!({})
        };
        if client
            .publish(&topic, QoS::AtLeastOnce, false, say(action, extra))
            .await
            .is_err()
        {
            return;
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
