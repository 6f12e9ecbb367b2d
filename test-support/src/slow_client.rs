//! Slow and abusive HTTP clients on raw TCP: connections that send part of a request and stall,
//! bodies that trickle, and the clock on when the server closes them (Tokio's: real time, or a
//! paused clock's in a test that holds one).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
    // Tokio's clock, so that times read on a paused clock are the clock's.
    time::Instant,
};

use super::{WAIT, exposition::Exposition};

/// What a stalled connection sends: a partial request line, partial headers, part of the
/// HTTP/2 preface, or nothing at all.
pub const PARTIAL_REQUESTS: [&[u8]; 4] = [
    b"GET /healthz HT",
    b"POST /MessageProducer HTTP/1.1\r\nHost: producer\r\nContent-Type: app",
    b"PRI * HTTP/2.0\r\n",
    b"",
];

/// A connection opened at `opened` that sent part of a request and nothing since.
pub struct Stalled {
    stream: TcpStream,
    opened: Instant,
}

/// Opens `n` connections to `addr`, one after the other (so at most `n` sockets), each sending
/// one of [`PARTIAL_REQUESTS`] in turn.
pub async fn stall(addr: SocketAddr, n: usize) -> Vec<Stalled> {
    let mut stalled = Vec::with_capacity(n);
    for i in 0..n {
        let opened = Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        let partial = PARTIAL_REQUESTS[i % PARTIAL_REQUESTS.len()];
        // A connection the server already closed (beyond its cap) may refuse the bytes.
        let _ = stream.write_all(partial).await;
        stalled.push(Stalled { stream, opened });
    }
    stalled
}

/// How long each connection stayed open, in the order given: `None` for one still open after
/// `limit` (the server answering anything at all counts as open: a slow client gets no answer).
pub async fn closed_after(stalled: Vec<Stalled>, limit: Duration) -> Vec<Option<Duration>> {
    let mut tasks = JoinSet::new();
    for (i, Stalled { mut stream, opened }) in stalled.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut buf = Vec::new();
            let closed = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
            // An error is a reset: closed too.
            (i, closed.ok().map(|_| opened.elapsed()))
        });
    }
    let mut closed = vec![None; tasks.len()];
    while let Some(result) = tasks.join_next().await {
        let (i, after) = result.expect("a reader task");
        closed[i] = after;
    }
    closed
}

/// Sends a request with a `Content-Length` of `length` whose body then arrives as one space
/// every `pace` (never all of it); returns the status the server answers with, if any, and how
/// long it took to answer and close.
pub async fn trickle_body(
    addr: SocketAddr,
    path: &str,
    length: usize,
    pace: Duration,
) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("sends the head");
    let (mut read, mut write) = stream.into_split();
    let mut answer = Vec::new();
    let reading = read.read_to_end(&mut answer);
    let writing = async {
        // Bounded by `length`: the body is never completed.
        for _ in 1..length {
            tokio::time::sleep(pace).await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let read = tokio::time::timeout(WAIT, async {
        tokio::select! {
            read = reading => read,
            () = writing => unreachable!("pending"),
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server still held the trickling body after {WAIT:?}"
    );
    let status = String::from_utf8_lossy(&answer)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, started.elapsed())
}

/// Asserts that every connection of [`closed_after`] was closed, no sooner than `min` and before
/// `max` after it opened.
pub fn assert_closed_between(closed: &[Option<Duration>], min: Duration, max: Duration) {
    for (i, after) in closed.iter().enumerate() {
        let after = after.unwrap_or_else(|| panic!("connection {i} is still open"));
        assert!(
            min <= after && after < max,
            "connection {i} closed after {after:?}, expected {min:?}..{max:?}"
        );
    }
}

/// The count of `{prefix}_http_connections_closed_total{limit="..."}` on a metrics page (the
/// series must be there).
pub fn closed_total(metrics: &Exposition, prefix: &str, limit: &str) -> f64 {
    metrics.get(&format!(
        "{prefix}_http_connections_closed_total{{limit=\"{limit}\"}}"
    ))
}

/// HTTP/2's connection preface, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// An HTTP/2 frame: 24-bit length, type, flags, stream id.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len())
        .expect("a small frame")
        .to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The CVE-2023-44487 pattern in one write: h2c, then `streams` requests (`GET /`), each reset
/// (`RST_STREAM` `CANCEL`) right after it was opened. Answers the error code of the server's
/// `GOAWAY`, if it sent one before closing.
pub async fn rapid_reset(addr: SocketAddr, streams: u32) -> Option<u32> {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    const CANCEL: [u8; 4] = 8_u32.to_be_bytes();
    // HPACK static table entries: :method GET, :scheme http, :path /.
    const GET_SLASH: [u8; 3] = [0x82, 0x86, 0x84];

    let mut burst = H2_PREFACE.to_vec();
    for i in 0..streams {
        let id = 2 * i + 1;
        burst.extend(h2_frame(HEADERS, END_STREAM_AND_HEADERS, id, &GET_SLASH));
        burst.extend(h2_frame(RST_STREAM, 0, id, &CANCEL));
    }
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    // The server may close before it has read it all.
    let _ = stream.write_all(&burst).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection is still open after {WAIT:?}");

    let mut frames = received.as_slice();
    while frames.len() >= 9 {
        let length =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        let Some(payload) = frames.get(9..9 + length) else {
            break;
        };
        if frames[3] == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        frames = &frames[9 + length..];
    }
    None
}
