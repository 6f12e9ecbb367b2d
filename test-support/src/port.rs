//! Loopback ports for servers that are not up yet, and when a test may re-use a port.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// A loopback port bound but not listening: connecting to it is refused, as to a server that has
/// not started, and no other process can take the port meanwhile (short of binding it with
/// SO_REUSEPORT as the same user, which the binaries do not). [`listen`](Self::listen) starts
/// the server there.
pub struct ClosedPort {
    socket: TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds an ephemeral port on 127.0.0.1.
    pub fn ephemeral() -> Self {
        Self::bind(([127, 0, 0, 1], 0).into())
    }

    /// Binds `addr` again while the server started there still listens, so the port stays held
    /// once that server stops: it can restart where its client dials, and nothing can take the
    /// port in between. Both sockets allow it with SO_REUSEPORT; a connection only ever reaches
    /// a listening one.
    pub fn hold(addr: SocketAddr) -> Self {
        Self::bind(addr)
    }

    fn bind(addr: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.bind(addr).expect("binding a loopback port");
        let addr = socket.local_addr().expect("a bound socket has an address");
        Self { socket, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port as a string, for a setting such as `DAPR_GRPC_PORT`.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Opens the port: connections are accepted from now on.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listening on a bound port")
    }
}

/// A loopback port free a moment ago, for a test of a binary binding the very port it is told.
///
/// A test re-uses a freed port only where the port must be known before its server exists and
/// nothing can hold it for that server meanwhile: here, and where a `devstack sidecar` process
/// restarts on the port the producer dials (`Devstack::start_on`; a fake sidecar in the test
/// process holds its port instead, [`ClosedPort::hold`]). Another process could take the port
/// in between; the test would then fail loudly, not pass wrongly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral loopback port")
        .port()
}
