//! A broker's own latency: QoS 1 publish from one client → delivery to another subscribed one,
//! one message at a time, TCP_NODELAY on both clients.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::Meter;

/// How long one message may take before the run is called off.
const PATIENCE: Duration = Duration::from_secs(5);

fn client(addr: &str, role: &str) -> Result<(AsyncClient, EventLoop), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--mqtt {addr:?}: host:port expected"))?;
    let id = format!("floor-probe-{}-{role}", std::process::id());
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((user, pass)) = pingantong_sim::login_from_env() {
        opts.set_credentials(user, pass);
    }
    let (c, mut el) = AsyncClient::new(opts, 16);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    Ok((c, el))
}

pub async fn publish_deliver(addr: &str, mut m: Meter) -> Result<Meter, String> {
    let topic = format!(
        "floor-probe/{}/{}",
        std::process::id(),
        addr.replace(':', "_")
    );
    let (subscriber, mut sub_loop) = client(addr, "sub")?;
    let (publisher, mut pub_loop) = client(addr, "pub")?;
    let (subscribed_tx, subscribed) = oneshot::channel();
    let (got_tx, mut got) = mpsc::unbounded_channel::<(u64, Instant)>();
    let sub_task = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscriber.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        if let Ok(b) = <[u8; 8]>::try_from(&p.payload[..8.min(p.payload.len())]) {
                            let _ = got_tx.send((u64::from_be_bytes(b), at));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = subscribed_tx.take() {
                            drop(tx);
                            eprintln!("mqtt {topic}: {e}");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    let pub_task = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let run = async {
        match tokio::time::timeout(PATIENCE, subscribed).await {
            Ok(Ok(())) => {}
            _ => return Err(format!("{addr}: could not connect and subscribe")),
        }
        let mut n: u64 = 0;
        while m.more() {
            n += 1;
            // 64 bytes, the size of a small alarm event.
            let mut payload = vec![0x5au8; 64];
            payload[..8].copy_from_slice(&n.to_be_bytes());
            let t = Instant::now();
            publisher
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match tokio::time::timeout(PATIENCE, got.recv()).await {
                    Ok(Some((k, at))) if k == n => {
                        m.record(at.duration_since(t));
                        break;
                    }
                    Ok(Some(_)) => continue, // a late duplicate (QoS 1 may deliver twice)
                    _ => {
                        return Err(format!(
                            "{addr}: message {n} not delivered within {PATIENCE:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    sub_task.abort();
    pub_task.abort();
    run.map(|()| m)
}
