//! Test support: a real NATS or Redis server (Debian's `nats-server` / `redis-server`) on a
//! reserved loopback port ([`HeldPort`]), owned by one test and killed when dropped. Shared by
//! the adapter tests (`pubsub_brokers`) and the process-level cluster tests
//! (`support::cluster`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rollcall_server::pubsub::ClusterConfig;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use super::ports::HeldPort;
/// The cluster secret the tests' nodes share.
pub const SECRET: &str = "a-cluster-secret-for-the-tests";

/// How long a broker may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Which broker a [`Broker`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// Debian's `nats-server`.
    Nats,
    /// Debian's `redis-server`.
    Redis,
}

impl BrokerKind {
    /// The usual path of the server binary, its name, and the Debian package that ships it.
    fn binary(self) -> (&'static str, &'static str, &'static str) {
        match self {
            BrokerKind::Nats => ("/usr/sbin/nats-server", "nats-server", "nats-server"),
            BrokerKind::Redis => ("/usr/bin/redis-server", "redis-server", "redis-server"),
        }
    }

    fn find_binary(self) -> PathBuf {
        let (usual, name, package) = self.binary();
        if Path::new(usual).exists() {
            return PathBuf::from(usual);
        }
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
        });
        on_path.unwrap_or_else(|| {
            panic!(
                "{name} not found (looked at {usual} and on PATH): install the Debian package \
                 `{package}` (apt-get install {package}; `make test` does this)"
            )
        })
    }

    /// The client URL of a broker of this kind on `port`.
    pub fn url(self, port: u16) -> String {
        match self {
            BrokerKind::Nats => format!("nats://127.0.0.1:{port}"),
            BrokerKind::Redis => format!("redis://127.0.0.1:{port}"),
        }
    }

    /// The adapter configuration for a node on `url` in cluster `cluster`, signing with
    /// [`SECRET`].
    pub fn config(self, url: &str, cluster: &str) -> ClusterConfig {
        self.config_with_secret(url, cluster, SECRET)
    }

    /// The adapter configuration for a node on `url` in cluster `cluster`, signing with
    /// `secret`.
    pub fn config_with_secret(self, url: &str, cluster: &str, secret: &str) -> ClusterConfig {
        let (url, cluster_name, secret) = (url.to_owned(), cluster.to_owned(), secret.to_owned());
        match self {
            BrokerKind::Nats => ClusterConfig::Nats {
                url,
                cluster_name,
                secret,
            },
            BrokerKind::Redis => ClusterConfig::Redis {
                url,
                cluster_name,
                secret,
            },
        }
    }
}

/// A broker process owned by one test; killed when dropped.
pub struct Broker {
    /// NATS or Redis.
    pub kind: BrokerKind,
    /// Its loopback port.
    pub port: u16,
    child: Option<Child>,
    /// The port, reserved for as long as the test holds the broker (so a broker restarted
    /// after [`Broker::kill`] finds it free).
    _held: Option<HeldPort>,
}

impl Broker {
    /// Starts a broker on a port reserved for it.
    pub async fn start(kind: BrokerKind) -> Broker {
        let held = HeldPort::new();
        let mut broker = Broker::start_on(kind, held.port()).await;
        broker._held = Some(held);
        broker
    }

    /// Starts a broker on `port`, a port the test holds (a restart on the port of a killed
    /// broker, whose [`Broker`] still holds it).
    pub async fn start_on(kind: BrokerKind, port: u16) -> Broker {
        let binary = kind.find_binary();
        let mut command = Command::new(&binary);
        match kind {
            BrokerKind::Nats => command.args(["-a", "127.0.0.1", "-p", &port.to_string()]),
            BrokerKind::Redis => command.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut broker = Broker {
            kind,
            port,
            child: Some(child),
            _held: None,
        };
        let ready = timeout(START_DEADLINE, async {
            loop {
                if broker.exited() {
                    return false;
                }
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return true;
                }
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match ready {
            Ok(true) => broker,
            Ok(false) => panic!("{kind:?} broker exited at start on port {port}"),
            Err(_) => panic!("{kind:?} broker did not listen on {port}"),
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The client URL.
    pub fn url(&self) -> String {
        self.kind.url(self.port)
    }

    /// A cluster name unique to this broker, so tests can never hear each other even if two of
    /// them ended up on one broker.
    pub fn cluster_name(&self) -> String {
        format!("t{}", self.port)
    }

    /// The `rollcall serve` flags that put a node on this broker.
    pub fn flags(&self) -> Vec<String> {
        let (cluster, flag) = match self.kind {
            BrokerKind::Nats => ("nats", "--nats-url"),
            BrokerKind::Redis => ("redis", "--redis-url"),
        };
        vec![
            "--cluster".into(),
            cluster.into(),
            flag.into(),
            self.url(),
            "--cluster-name".into(),
            self.cluster_name(),
            "--cluster-secret".into(),
            SECRET.into(),
        ]
    }

    /// Kills the broker now (as a crash would) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
