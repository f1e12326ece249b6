//! Test support: a real NATS or Redis server (Debian's `nats-server` / `redis-server`) on a free
//! loopback port, owned by one test and killed when dropped. Shared by the adapter tests
//! (`pubsub_brokers`) and the process-level cluster tests (`support::cluster`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rollcall_server::pubsub::ClusterConfig;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

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
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Broker {
    /// Starts a broker on a free port. Another process may grab the port between our probe
    /// and the broker's bind; a broker that exits at once is retried on another port.
    pub async fn start(kind: BrokerKind) -> Broker {
        for _ in 0..5 {
            if let Some(broker) = Broker::try_start_on(kind, free_port()).await {
                return broker;
            }
        }
        panic!("{kind:?} broker exited at start on 5 different ports");
    }

    /// Starts a broker on `port`, which must be free (a restart on the port of a killed one).
    pub async fn start_on(kind: BrokerKind, port: u16) -> Broker {
        match Broker::try_start_on(kind, port).await {
            Some(broker) => broker,
            None => panic!("{kind:?} broker could not start on port {port}"),
        }
    }

    async fn try_start_on(kind: BrokerKind, port: u16) -> Option<Broker> {
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
            // Another broker may already hold the port (one another test just freed): ours then
            // fails to bind and exits at once. Make sure the broker answering is ours.
            Ok(true) => {
                sleep(Duration::from_millis(200)).await;
                if broker.exited() {
                    broker.child = None;
                    None
                } else {
                    Some(broker)
                }
            }
            Ok(false) => {
                broker.child = None;
                None
            }
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
