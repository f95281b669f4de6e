//! Simulated carers: one MQTT client that receives every carer's dispatch offers.

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
    received: Mutex<Vec<Offer>>,
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

/// Subscribe to `{prefix}/v1/carers/+/dispatch` on the broker and count offers
/// until the returned task is aborted.
pub fn spawn(
    host: &str,
    port: u16,
    prefix: &str,
    client_id: &str,
    stats: Arc<CarerStats>,
) -> tokio::task::JoinHandle<()> {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let filter = format!("{prefix}/v1/carers/+/dispatch");
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
                    if let Ok(offer) = serde_json::from_slice::<Offer>(&p.payload) {
                        stats.offers.fetch_add(1, Ordering::Relaxed);
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
