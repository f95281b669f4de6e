//! The server's MQTT connection: reconnects with backoff and reports its state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet};
use tokio_util::sync::CancellationToken;

use crate::telemetry::events;

/// Where the broker is: `mqtt://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
}

impl MqttEndpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("MQTT URL {url:?} must start with mqtt://"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("MQTT URL {url:?} has a bad port"))?,
            ),
            None => (rest, 1883),
        };
        if host.is_empty() {
            return Err(format!("MQTT URL {url:?} has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

/// Whether the connection to the broker is up right now.
#[derive(Clone, Default)]
pub struct MqttStatus(Arc<AtomicBool>);

impl MqttStatus {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Connect (in the background: a broker that is down at start is retried for
/// ever) and keep the event loop running until `shutdown`.
pub fn connect(
    endpoint: &MqttEndpoint,
    client_id: &str,
    shutdown: CancellationToken,
) -> (AsyncClient, MqttStatus, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    let status = MqttStatus::default();
    let flag = status.clone();
    let url = endpoint.url();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = eventloop.poll() => e,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    flag.0.store(true, Ordering::Release);
                    events::MqttConnection {
                        up: true,
                        detail: url.clone(),
                    }
                    .emit();
                }
                Ok(_) => {}
                Err(e) => {
                    let was_up = flag.0.swap(false, Ordering::AcqRel);
                    if was_up || backoff <= Duration::from_millis(100) {
                        events::MqttConnection {
                            up: false,
                            detail: format!("{url}: {e}"),
                        }
                        .emit();
                    }
                    // The next poll reconnects at once; pace it.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        flag.0.store(false, Ordering::Release);
    });
    (client, status, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            MqttEndpoint::parse("mqtt://127.0.0.1:1883").unwrap(),
            MqttEndpoint {
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(MqttEndpoint::parse("mqtt://broker").unwrap().port, 1883);
        assert!(MqttEndpoint::parse("http://x").is_err());
        assert!(MqttEndpoint::parse("mqtt://x:notaport").is_err());
        assert!(MqttEndpoint::parse("mqtt://:1").is_err());
    }
}
