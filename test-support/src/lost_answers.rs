//! A TCP proxy in front of a gRPC server (HTTP/2 over cleartext) that loses answers: it passes
//! every byte on, but instead of every `every`th response it cuts the connection, both ways.
//! The server has handled that request (it answers only once its handler is done: a sidecar has
//! enqueued the message), and the client never learns it: a lost answer, as a connection that
//! breaks after the request makes one. The client's calls in flight on that connection fail and
//! it reconnects; a producer retries them.
//!
//! It reads the server's side frame by frame (the 9-byte HTTP/2 frame header), so it can tell a
//! response's first frame (a HEADERS frame on a stream not seen before) from the rest; it never
//! decodes or changes a frame.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinSet,
};

use super::Served;

/// HTTP/2's frame type HEADERS (RFC 9113, section 6.2).
const HEADERS: u8 = 0x1;

/// A running proxy on 127.0.0.1.
pub struct LostAnswers {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    server: Served,
}

#[derive(Debug, Default)]
struct Counts {
    responses: AtomicU64,
    cut: AtomicU64,
}

impl LostAnswers {
    /// Starts on an ephemeral port, in front of `upstream`; loses every `every`th answer (0:
    /// none).
    pub async fn start(upstream: SocketAddr, every: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        let server = Served::spawn("the lossy proxy", move |shutdown| async move {
            let mut connections = JoinSet::new();
            loop {
                let client = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted?.0,
                };
                let counts = Arc::clone(&shared);
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, every, &counts).await;
                    }
                });
            }
            connections.shutdown().await;
            Ok::<_, std::io::Error>(())
        });
        Self {
            addr,
            counts,
            server,
        }
    }

    /// The port, as a string for a producer's DAPR_GRPC_PORT.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Answers lost so far: each was a request the server handled.
    pub fn cut(&self) -> u64 {
        self.counts.cut.load(Ordering::SeqCst)
    }

    /// Responses the server began, lost ones included.
    pub fn responses(&self) -> u64 {
        self.counts.responses.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        self.server.stop("the lossy proxy").await;
    }
}

/// Relays one connection until either side closes it, or until it is cut.
async fn relay(client: TcpStream, server: TcpStream, every: u64, counts: &Counts) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut from_client, to_client) = client.into_split();
    let (from_server, mut to_server) = server.into_split();
    let upstream = tokio::io::copy(&mut from_client, &mut to_server);
    let downstream = answers(from_server, to_client, every, counts);
    // Whichever ends first ends both: dropping the halves closes both sockets.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// Passes the server's frames on, one by one, until it must lose one; then returns.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    every: u64,
    counts: &Counts,
) -> std::io::Result<()> {
    let mut streams = HashSet::new();
    let mut frame = Vec::new();
    loop {
        let mut header = [0u8; 9];
        from.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & !(1 << 31);
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(9 + length, 0);
        from.read_exact(&mut frame[9..]).await?;
        if header[3] == HEADERS && stream != 0 && streams.insert(stream) {
            let n = counts.responses.fetch_add(1, Ordering::SeqCst) + 1;
            if every != 0 && n.is_multiple_of(every) {
                counts.cut.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
        }
        to.write_all(&frame).await?;
    }
}
