//! The embedded MQTT broker (rumqttd) used when no external broker is configured.
//!
//! It runs on its own thread for the life of the process: rumqttd has no
//! shutdown and keeps nothing on disk, which is fine for a laptop, a demo or a
//! test, and why production points `mqtt_url` at Mosquitto or EMQX instead.
//! It listens on loopback and takes one credential, the gate's (and the
//! server's): clients reach it only through [`gate`], which enforces who may
//! publish and subscribe what.

pub mod dynsec;
pub mod gate;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no free port for the embedded broker: {0}")]
    NoPort(std::io::Error),
    #[error("the embedded broker did not start listening on {0} within 5 s")]
    NotListening(SocketAddr),
    #[error("this build has no embedded broker (feature `embedded-broker`); set mqtt_url")]
    NotBuilt,
}

/// Start the broker on `addr` (port 0: any free port), accepting only `login`,
/// and return where it listens.
pub fn start_embedded(
    addr: SocketAddr,
    login: (String, String),
) -> Result<SocketAddr, BrokerError> {
    let addr = if addr.port() == 0 {
        // rumqttd binds by itself; find a free port for it first.
        let probe = TcpListener::bind(addr).map_err(BrokerError::NoPort)?;
        probe.local_addr().map_err(BrokerError::NoPort)?
    } else {
        addr
    };
    spawn(addr, login.clone())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if speaks_mqtt(addr, &login) {
            match no_delay_on_listener(addr) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%addr, "embedded broker's listener not found: Nagle stays on")
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "embedded broker's listener: Nagle stays on")
                }
            }
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(addr))
}

/// rumqttd leaves Nagle's algorithm on for its clients, so a device's ACK — written to the device
/// right after the broker's PUBACK for the same event — waits for the device's delayed ACK of the
/// PUBACK (40 ms on Linux; measured: MQTT press → ACK p50 41 ms with it, about 4 ms without).
/// Linux hands a listener's TCP_NODELAY down to every socket it accepts, so it is set once on the
/// broker's listener, found among this process's descriptors by its port.
#[cfg(target_os = "linux")]
fn no_delay_on_listener(addr: SocketAddr) -> std::io::Result<bool> {
    use std::os::fd::BorrowedFd;

    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let inodes: Vec<String> = std::fs::read_to_string(table)?
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            // 0A: listening
            (port == addr.port() && *f.get(3)? == "0A").then(|| f.get(9).map(|i| i.to_string()))?
        })
        .collect();
    let mut found = false;
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        else {
            continue;
        };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !inodes.iter().any(|i| i == inode) {
            continue;
        }
        // SAFETY: the descriptor was open a moment ago and rumqttd keeps its listener for the
        // life of the process; were it closed and reused meanwhile, the option would land on
        // another socket (harmless) or fail with ENOTSOCK.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        socket2::SockRef::from(&fd).set_tcp_nodelay(true)?;
        found = true;
    }
    Ok(found)
}

#[cfg(not(target_os = "linux"))]
fn no_delay_on_listener(_addr: SocketAddr) -> std::io::Result<bool> {
    Ok(false)
}

/// A full CONNECT / CONNACK / DISCONNECT exchange: the broker is not only
/// listening but answering (and a bare probe socket would be logged as an error).
fn speaks_mqtt(addr: SocketAddr, login: &(String, String)) -> bool {
    use std::io::{Read, Write};

    use rumqttc::mqttbytes::v4::{Connect, Login};
    let mut connect = Connect::new("probe");
    connect.login = Some(Login::new(login.0.clone(), login.1.clone()));
    let mut out = bytes::BytesMut::new();
    if connect.write(&mut out).is_err() {
        return false;
    }
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut ack = [0u8; 4];
    let ok = s.write_all(&out).is_ok()
        && s.read_exact(&mut ack).is_ok()
        && ack == [0x20, 0x02, 0x00, 0x00];
    let _ = s.write_all(&[0xe0, 0x00]);
    ok
}

#[cfg(feature = "embedded-broker")]
fn spawn(addr: SocketAddr, login: (String, String)) -> Result<(), BrokerError> {
    use std::collections::HashMap;

    use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 500,
        auth: Some(HashMap::from([login])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 10 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("embedded".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::NoPort)?;
    Ok(())
}

#[cfg(not(feature = "embedded-broker"))]
fn spawn(_addr: SocketAddr, _login: (String, String)) -> Result<(), BrokerError> {
    Err(BrokerError::NotBuilt)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_listener_found_by_its_port_hands_no_delay_to_what_it_accepts() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _before = TcpStream::connect(addr).unwrap();
        let (old, _) = listener.accept().unwrap();
        assert!(!old.nodelay().unwrap(), "Nagle is on by default");
        assert!(no_delay_on_listener(addr).unwrap(), "found");
        let _client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        // No listener on a port: nothing found, nothing touched.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!no_delay_on_listener(free).unwrap());
    }
}
