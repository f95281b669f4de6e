//! Loopback TCP round trip: 64 bytes out and back over 127.0.0.1, TCP_NODELAY on both ends,
//! the echo server on a thread (and runtime) of its own, as a server process would be.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Meter;

const SIZE: usize = 64;

pub async fn round_trip(mut m: Meter) -> Result<Meter, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; SIZE];
            // Until the client hangs up.
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await?;
            }
            std::io::Result::Ok(())
        })
    });
    let r = async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut buf = [0x5au8; SIZE];
        while m.more() {
            let t = Instant::now();
            s.write_all(&buf).await?;
            s.read_exact(&mut buf).await?;
            m.record(t.elapsed());
        }
        std::io::Result::Ok(())
    }
    .await;
    // The client's socket is dropped: the echo thread sees EOF and ends.
    let served = tokio::task::spawn_blocking(move || echo.join())
        .await
        .map_err(|e| e.to_string())?;
    r.map_err(|e| e.to_string())?;
    match served {
        Ok(Ok(())) => Ok(m),
        Ok(Err(e)) => Err(format!("echo server: {e}")),
        Err(_) => Err("echo server panicked".into()),
    }
}
