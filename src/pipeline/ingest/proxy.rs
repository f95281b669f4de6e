//! The PROXY protocol header a load balancer (HAProxy's `send-proxy-v2`)
//! puts before a device's bytes, so the server still knows the device's
//! address. Parsed by the `ppp` crate; read here exactly, never a byte past
//! it, so what follows (a frame, or a TLS handshake) is untouched.

use std::net::{IpAddr, SocketAddr};

use ppp::{HeaderResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is one text line of at most this many bytes.
const V1_MAX: usize = 107;
/// Longest v2 header taken: addresses and the TLVs a balancer may add.
const V2_MAX: usize = 16 + 512;

/// Why a connection was refused before its first frame.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header: the listener takes devices only through the balancer")]
    Missing,
    #[error("PROXY protocol header not understood: {0}")]
    Invalid(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    /// Low-cardinality reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Missing => "proxy_header_missing",
            ProxyError::Invalid(_) => "proxy_header_invalid",
            ProxyError::Io(_) => "proxy_header_unread",
        }
    }
}

/// Read the header and say where the device is: `None` for the balancer's
/// own connections (v2 `LOCAL`, v1 `UNKNOWN`: health checks), which keep the
/// connection's address.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = vec![0u8; 8];
    stream.read_exact(&mut head).await?;
    if head.starts_with(b"PROXY ") {
        // One line: read to its end, a byte at a time, and no further.
        while !head.ends_with(b"\r\n") {
            if head.len() >= V1_MAX {
                return Err(ProxyError::Invalid("v1 line too long".into()));
            }
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await?;
            head.push(b[0]);
        }
    } else if head[..] == V2_SIGNATURE[..8] {
        head.resize(16, 0);
        stream.read_exact(&mut head[8..]).await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if 16 + len > V2_MAX {
            return Err(ProxyError::Invalid(format!("v2 header of {len} bytes")));
        }
        head.resize(16 + len, 0);
        stream.read_exact(&mut head[16..]).await?;
    } else {
        return Err(ProxyError::Missing);
    }
    source_of(&head)
}

/// The device's address a whole header names.
fn source_of(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let addr = |ip: IpAddr, port| Some(SocketAddr::new(ip, port));
    match HeaderResult::parse(header) {
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                addr(a.source_address.into(), a.source_port)
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                addr(a.source_address.into(), a.source_port)
            }
            (v2::Command::Proxy, _) => None,
        }),
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => addr(a.source_address.into(), a.source_port),
            v1::Addresses::Tcp6(a) => addr(a.source_address.into(), a.source_port),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Invalid(e.to_string())),
        HeaderResult::V1(Err(e)) => Err(ProxyError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut r = bytes;
        let got = read_header(&mut r).await;
        (got, r.to_vec())
    }

    fn v2(command: v2::Command, from: &str, to: &str) -> Vec<u8> {
        let from: SocketAddr = from.parse().unwrap();
        let to: SocketAddr = to.parse().unwrap();
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, (from, to))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn the_device_address_is_read_and_nothing_after_it() {
        let mut wire = v2(v2::Command::Proxy, "203.0.113.7:40123", "10.0.0.1:7700");
        wire.extend_from_slice(b"PA\x01\x01");
        let (got, rest) = read(&wire).await;
        assert_eq!(got.unwrap(), Some("203.0.113.7:40123".parse().unwrap()));
        assert_eq!(
            rest, b"PA\x01\x01",
            "the frame after the header is untouched"
        );

        let mut wire = v2(
            v2::Command::Proxy,
            "[2001:db8::7]:40123",
            "[2001:db8::1]:7700",
        );
        wire.push(0x78);
        let (got, rest) = read(&wire).await;
        assert_eq!(got.unwrap(), Some("[2001:db8::7]:40123".parse().unwrap()));
        assert_eq!(rest, [0x78]);

        let (got, rest) = read(b"PROXY TCP4 198.51.100.9 10.0.0.1 5555 7700\r\nxx").await;
        assert_eq!(got.unwrap(), Some("198.51.100.9:5555".parse().unwrap()));
        assert_eq!(rest, b"xx");
    }

    #[tokio::test]
    async fn the_balancers_own_checks_keep_the_connection_address() {
        let (got, _) = read(&v2(v2::Command::Local, "127.0.0.1:1", "127.0.0.1:2")).await;
        assert_eq!(got.unwrap(), None);
        let (got, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn a_device_speaking_directly_is_refused() {
        let (got, _) = read(b"PA\x01\x01\x00\x30\x06PA0001").await;
        assert_eq!(got.unwrap_err().reason(), "proxy_header_missing");
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (got, _) = read(&bad).await;
        assert_eq!(got.unwrap_err().reason(), "proxy_header_invalid");
        let (got, _) = read(b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n").await;
        assert_eq!(got.unwrap_err().reason(), "proxy_header_invalid");
        let (got, _) = read(b"PROXY TCP4 1.2.3.4").await;
        assert_eq!(
            got.unwrap_err().reason(),
            "proxy_header_unread",
            "cut short"
        );
    }
}
