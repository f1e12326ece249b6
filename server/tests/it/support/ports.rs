//! Ports a test must know before anything listens on them (a seed that starts later, a broker
//! restarted where the old one was, an address nobody answers on).
//!
//! A [`HeldPort`] is a socket bound with `SO_REUSEADDR` that never listens: a connect to it is
//! refused, the kernel hands the port to nobody who asks for port 0, and a server that binds
//! with `SO_REUSEADDR` (rollcall, redis-server and nats-server all do) can still listen on it.
//! So the port stays ours from before the server starts until the test ends, instead of being
//! probed, released, and hoped for.

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A loopback port reserved for one test; released when dropped.
pub struct HeldPort {
    /// The reserved address (`IP:PORT`).
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

impl HeldPort {
    /// Reserves a free port on 127.0.0.1.
    pub fn new() -> HeldPort {
        HeldPort::on("127.0.0.1")
    }

    /// Reserves a free port on `ip` (any loopback address, e.g. `127.0.0.2`).
    pub fn on(ip: &str) -> HeldPort {
        let addr: SocketAddr = format!("{ip}:0").parse().expect("an IPv4 address");
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind a free port");
        let addr = socket.local_addr().expect("the bound address");
        HeldPort {
            addr,
            _socket: socket,
        }
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

#[tokio::test]
async fn a_held_port_refuses_connects_and_a_server_can_still_listen_on_it() {
    let held = HeldPort::new();
    assert!(tokio::net::TcpStream::connect(held.addr).await.is_err());
    let listener = tokio::net::TcpListener::bind(held.addr)
        .await
        .expect("a SO_REUSEADDR listener binds the held port");
    let (connected, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(held.addr), listener.accept());
    assert!(connected.is_ok() && accepted.is_ok());
}
