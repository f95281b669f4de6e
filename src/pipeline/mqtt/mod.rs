//! The server's MQTT session: one persistent connection that publishes offers
//! and ACKs and receives device events and carer replies, reconnecting with backoff.

pub use pingantong_domain::acl;
pub mod credential;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, NetworkOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use pingantong_telemetry::events;

/// Where Mosquitto's dynamic-security plugin takes commands and answers them
/// (`broker::dynsec` keeps it in step with the registry).
pub const DYNSEC_COMMANDS: &str = "$CONTROL/dynamic-security/v1";
pub const DYNSEC_RESPONSES: &str = "$CONTROL/dynamic-security/v1/response";

/// Where the broker is: `mqtt://host:port`, or `mqtts://host:port` for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttEndpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://") {
            (r, true)
        } else if let Some(r) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (r, false)
        } else {
            return Err(format!(
                "MQTT URL {url:?} must start with mqtt:// or mqtts://"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("MQTT URL {url:?} has a bad port"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("MQTT URL {url:?} has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
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

/// What the server's MQTT session needs to know.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub endpoint: MqttEndpoint,
    /// Fixed per server instance: the broker keeps this session (and the
    /// messages queued for it) while the server is away.
    pub client_id: String,
    pub prefix: String,
    /// With several servers, `$share/<group>/…` splits device traffic among them.
    pub share_group: Option<String>,
    pub credentials: Option<(String, String)>,
    /// Further topic filters (adapters); what arrives on them goes to `adapter_events`.
    pub extra_filters: Vec<String>,
    /// PEM certificates of the authorities that sign the broker's certificate
    /// (needed with `mqtts://`).
    pub ca_pem: Option<Vec<u8>>,
    /// Read the broker's dynamic-security answers (`control_responses`).
    pub dynsec: bool,
}

/// The server's connection to the broker and what arrives on it.
pub struct Link {
    pub client: AsyncClient,
    pub status: MqttStatus,
    /// Device events (`<prefix>/v1/devices/<id>/events`): ack each after its commit.
    pub device_events: mpsc::Receiver<Publish>,
    /// Carer replies (`<prefix>/v1/carers/<id>/reply`): ack each once applied.
    pub carer_replies: mpsc::Receiver<Publish>,
    /// Everything on the extra filters: ack each after its commit.
    pub adapter_events: mpsc::Receiver<Publish>,
    /// The broker's dynamic-security answers (with `dynsec`).
    pub control_responses: mpsc::Receiver<Publish>,
    pub task: tokio::task::JoinHandle<()>,
}

/// On a clean stop: say "offline" (a clean DISCONNECT suppresses the last
/// will) and let the event loop send it, for at most a second.
async fn say_goodbye(
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    status_topic: &str,
    connected: bool,
) {
    if !connected {
        return;
    }
    let _ = client.try_publish(
        status_topic,
        QoS::AtLeastOnce,
        true,
        r#"{"v":1,"status":"offline"}"#,
    );
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// Topic filters the server subscribes to.
pub fn filters(cfg: &LinkConfig) -> Vec<String> {
    let devices = format!("{}/v1/devices/+/events", cfg.prefix);
    let devices = match &cfg.share_group {
        Some(g) => format!("$share/{g}/{devices}"),
        None => devices,
    };
    // Replies are shared too: any server can apply a reply (it goes through
    // the database), and sharing hands each one to a single server.
    let replies = format!("{}/v1/carers/+/reply", cfg.prefix);
    let replies = match &cfg.share_group {
        Some(g) => format!("$share/{g}/{replies}"),
        None => replies,
    };
    // Clients without credentials, where the broker lets them in (quarantine).
    let quarantine = format!("{}/v1/quarantine/+/events", cfg.prefix);
    let quarantine = match &cfg.share_group {
        Some(g) => format!("$share/{g}/{quarantine}"),
        None => quarantine,
    };
    let mut all = vec![devices, replies, quarantine];
    if cfg.dynsec {
        // Every server reads its own answers: never shared.
        all.push(DYNSEC_RESPONSES.to_owned());
    }
    all.extend(cfg.extra_filters.iter().map(|f| match &cfg.share_group {
        Some(g) => format!("$share/{g}/{f}"),
        None => f.clone(),
    }));
    all
}

/// Connect (in the background: a broker that is down at start is retried for
/// ever) and keep the event loop running until `shutdown`.
///
/// The session is persistent (clean session off) and acknowledgements are
/// manual: the broker forgets a message only once the server has committed
/// it, so nothing is lost if the server dies in between.
pub fn connect(cfg: &LinkConfig, shutdown: CancellationToken) -> Link {
    let mut opts = MqttOptions::new(&cfg.client_id, cfg.endpoint.host.clone(), cfg.endpoint.port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    // Anyone watching (a console, a second server) learns when this server goes away.
    let status_topic = format!("{}/v1/server/{}/status", cfg.prefix, cfg.client_id);
    opts.set_last_will(LastWill::new(
        status_topic.clone(),
        r#"{"v":1,"status":"offline"}"#,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((user, pass)) = &cfg.credentials {
        opts.set_credentials(user, pass);
    }
    if cfg.endpoint.tls {
        // rustls needs one crypto provider per process; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: cfg.ca_pem.clone().unwrap_or_default(),
            alpn: None,
            client_auth: None,
        }));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    let status = MqttStatus::default();
    let flag = status.clone();
    let url = cfg.endpoint.url();
    let (device_tx, device_events) = mpsc::channel(4096);
    let (reply_tx, carer_replies) = mpsc::channel(1024);
    let (adapter_tx, adapter_events) = mpsc::channel(1024);
    let (control_tx, control_responses) = mpsc::channel(64);
    let has_adapters = !cfg.extra_filters.is_empty();
    let filters = filters(cfg);
    let device_prefix = format!("{}/v1/devices/", cfg.prefix);
    let quarantine_prefix = format!("{}/v1/quarantine/", cfg.prefix);
    let carer_prefix = format!("{}/v1/carers/", cfg.prefix);
    let sub_client = client.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let polled = tokio::select! {
                _ = shutdown.cancelled() => {
                    say_goodbye(&sub_client, &mut eventloop, &status_topic, flag.is_up()).await;
                    break;
                }
                e = eventloop.poll() => e,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    // Subscribe on every connect, kept session or not: a
                    // session can be kept without the subscriptions (the
                    // broker cut the connection before it took them).
                    // Subscribing again to a kept one loses nothing; a
                    // retained message on a device topic comes again and is
                    // answered `duplicate`.
                    for f in &filters {
                        let _ = sub_client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                    let _ = sub_client.try_publish(
                        status_topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        r#"{"v":1,"status":"online"}"#,
                    );
                    flag.0.store(true, Ordering::Release);
                    events::MqttConnection {
                        up: true,
                        detail: url.clone(),
                    }
                    .emit();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic == DYNSEC_RESPONSES {
                        // Nothing durable: acknowledged at once, dropped if nobody reads.
                        let _ = sub_client.try_ack(&p);
                        let _ = control_tx.try_send(p);
                        continue;
                    }
                    let to = if (p.topic.starts_with(&device_prefix)
                        || p.topic.starts_with(&quarantine_prefix))
                        && p.topic.ends_with("/events")
                    {
                        Some(&device_tx)
                    } else if p.topic.starts_with(&carer_prefix) && p.topic.ends_with("/reply") {
                        Some(&reply_tx)
                    } else if has_adapters {
                        Some(&adapter_tx)
                    } else {
                        None
                    };
                    match to {
                        // A full queue holds the event loop: back-pressure to the broker.
                        Some(tx) => {
                            let _ = tx.send(p).await;
                        }
                        None => {
                            let _ = sub_client.try_ack(&p);
                        }
                    }
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
    Link {
        client,
        status,
        device_events,
        carer_replies,
        adapter_events,
        control_responses,
        task,
    }
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
                port: 1883,
                tls: false,
            }
        );
        let tls = MqttEndpoint::parse("mqtts://broker.example").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert_eq!(tls.url(), "mqtts://broker.example:8883");
        assert_eq!(MqttEndpoint::parse("mqtt://broker").unwrap().port, 1883);
        assert!(MqttEndpoint::parse("http://x").is_err());
        assert!(MqttEndpoint::parse("mqtt://x:notaport").is_err());
        assert!(MqttEndpoint::parse("mqtt://:1").is_err());
    }
}
