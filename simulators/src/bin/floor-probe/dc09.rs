//! A DC-09 receiver one message at a time, as a panel talks to it: plain ADM-CID (the frames
//! pendant-sim's `dc09-plain` sends), each sent only after the previous one's ACK. One
//! connection's round trip, and so its ceiling in messages per second.

use std::time::Instant;

use bytes::BytesMut;
use pingantong_protocol::EventKind;
use pingantong_sim::fleet::Pendant;
use pingantong_sim::speaker::{Dc09Speaker, Speaker, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Meter;

pub async fn ack_round_trip(addr: &str, account: &str, mut m: Meter) -> Result<Meter, String> {
    let speaker = Dc09Speaker { encrypted: false };
    let me = Pendant::new(account.to_owned(), Vec::new());
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(256);
    let mut seq = 0u32;
    while m.more() {
        seq += 1;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let frame = speaker.encode(&me, seq, EventKind::Sos, now_ms, None);
        let t = Instant::now();
        s.write_all(&frame).await.map_err(|e| e.to_string())?;
        let answer = loop {
            if let Some(a) = speaker.next_reply(&me, &mut buf)? {
                break a;
            }
            match tokio::time::timeout(std::time::Duration::from_secs(5), s.read_buf(&mut buf))
                .await
            {
                Ok(Ok(0)) => return Err(format!("{addr}: connection closed")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("{addr}: {e}")),
                Err(_) => return Err(format!("{addr}: no answer to message {seq} within 5 s")),
            }
        };
        if answer.verdict != Verdict::Ack || answer.seq != Some(speaker.wire_seq(seq)) {
            return Err(format!("{addr}: message {seq} answered {answer:?}"));
        }
        m.record(t.elapsed());
    }
    Ok(m)
}
