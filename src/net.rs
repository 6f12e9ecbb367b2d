//! Listening sockets for every server: each accepted connection gets `TCP_NODELAY`.
//!
//! Without it, Nagle's algorithm holds small writes (a gRPC response's HTTP/2 frames, a short
//! REST answer) back until the peer's delayed ACK, up to 40 ms on Linux. daprd has it (Go sets it
//! on every TCP connection), while neither tonic (for a listener it did not bind) nor axum sets it.

use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// A bound listener for `axum::serve` that sets `TCP_NODELAY` on each accepted connection.
pub type HttpListener = axum::serve::TapIo<TcpListener, fn(&mut TcpStream)>;

/// A bound listener for tonic's `serve_with_incoming(_shutdown)`, with `TCP_NODELAY`.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A bound listener for `axum::serve`, with `TCP_NODELAY`.
pub fn http_listener(listener: TcpListener) -> HttpListener {
    use axum::serve::ListenerExt;
    listener.tap_io(set_nodelay)
}

fn set_nodelay(stream: &mut TcpStream) {
    nodelay(stream);
}

/// Sets `TCP_NODELAY` on an accepted connection (for servers that accept by themselves).
pub fn nodelay(stream: &TcpStream) {
    // Only fails on a connection already gone, which the server finds out by itself.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;
    use futures::StreamExt;

    use super::*;

    async fn bound() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn http_listener_sets_nodelay_on_accepted_connections() {
        let (listener, addr) = bound().await;
        let mut listener = http_listener(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }

    #[tokio::test]
    async fn grpc_incoming_sets_nodelay_on_accepted_connections() {
        let (listener, addr) = bound().await;
        let mut incoming = grpc_incoming(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_plain_listener_does_not_set_nodelay() {
        // Checks the check: without the helpers, accepted connections lack NODELAY.
        let (listener, addr) = bound().await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap());
    }
}
