//! Sockets for a large fleet: source addresses spread over 127.0.0.0/8 (one address has only
//! ~28k ephemeral ports) and the process's open-file limit.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Above this many pendants, sources are spread unless told otherwise.
pub const SPREAD_ABOVE: usize = 10_000;

/// Source addresses a fleet of `pendants` spreads over by default: one per 5,000 pendants above
/// [`SPREAD_ABOVE`], none (the kernel's choice, 127.0.0.1) below.
pub fn default_spread(pendants: usize) -> usize {
    if pendants > SPREAD_ABOVE {
        pendants.div_ceil(5_000)
    } else {
        0
    }
}

/// The `k`-th source address: 127.0.0.2 … 127.0.0.251, then 127.0.1.2 …; `.0`, `.1`, `.252`+
/// are never used.
pub fn source_addr(k: usize) -> Ipv4Addr {
    let net = k / 250;
    let host = 2 + (k % 250) as u8;
    Ipv4Addr::new(127, ((net >> 8) & 0xff) as u8, (net & 0xff) as u8, host)
}

/// Connect to `to`, from `from` when given; TCP_NODELAY set.
pub async fn connect(
    to: SocketAddr,
    from: Option<Ipv4Addr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match (to, from) {
        (SocketAddr::V4(_), Some(ip)) => {
            let s = TcpSocket::new_v4()?;
            bind_no_port(&s);
            s.bind(SocketAddr::new(ip.into(), 0))?;
            s
        }
        (SocketAddr::V4(_), None) => TcpSocket::new_v4()?,
        (SocketAddr::V6(_), _) => TcpSocket::new_v6()?,
    };
    let stream = tokio::time::timeout(timeout, socket.connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Leave the port to `connect`, which picks one free for the whole 4-tuple (and may reuse one in
/// TIME_WAIT on loopback), instead of `bind`, which needs one free on the address alone.
#[cfg(target_os = "linux")]
fn bind_no_port(s: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, a pointer to an int of the size given.
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn bind_no_port(_s: &TcpSocket) {}

/// Raise the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Files kept for everything but the pendants' sockets (runtime, stdio, the result file).
pub const SPARE_FILES: u64 = 64;

/// `Err(message)` if `persistent` connections cannot fit under `limit` open files.
pub fn check_file_limit(persistent: usize, limit: u64) -> Result<(), String> {
    let need = persistent as u64 + SPARE_FILES;
    if need <= limit {
        return Ok(());
    }
    let fit = limit.saturating_sub(SPARE_FILES);
    Err(format!(
        "{persistent} pendants would each hold a connection, but this process may open only {limit} files \
         (its hard limit; {fit} for pendants). Either raise the hard limit as root (`ulimit -Hn {need}` in the \
         shell that starts it, or LimitNOFILE={need} in a systemd unit), or let some pendants report per \
         connection (--persistent {fit} or --connections per-report), or split the fleet over several \
         processes: --pendants {fit} --first 1, then --pendants {fit} --first {}, …",
        fit + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_in_loopback_and_avoid_network_and_broadcast_like_hosts() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(249), Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(source_addr(250), Ipv4Addr::new(127, 0, 1, 2));
        assert_eq!(source_addr(250 * 256), Ipv4Addr::new(127, 1, 0, 2));
        let all: std::collections::HashSet<_> = (0..10_000).map(source_addr).collect();
        assert_eq!(all.len(), 10_000);
        assert!(
            all.iter()
                .all(|a| a.is_loopback() && a.octets()[3] >= 2 && a.octets()[3] <= 251)
        );
        assert_eq!(default_spread(10_000), 0);
        assert_eq!(default_spread(100_000), 20);
    }

    #[test]
    fn the_file_limit_message_says_how_to_get_out() {
        assert!(check_file_limit(19_000, 20_000).is_ok());
        let e = check_file_limit(30_000, 20_000).unwrap_err();
        assert!(
            e.contains("20000") && e.contains("LimitNOFILE") && e.contains("--first 19937"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_spread_source_connects_from_its_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = l.local_addr().unwrap();
        let s = connect(to, Some(source_addr(7)), Duration::from_secs(2))
            .await
            .unwrap();
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
        assert_eq!(s.local_addr().unwrap().ip(), peer.ip());
    }
}
