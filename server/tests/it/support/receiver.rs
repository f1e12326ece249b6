//! A real HTTP receiver on 127.0.0.1 for what rollcall sends to a backend (webhooks, the join
//! hook): it records every request and answers as the test decides, which it may change at any
//! time (a status and a body, or hanging without an answer). Every wait has a deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How the receiver answers a request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and body (JSON).
    Status(u16, String),
    /// Nothing: the connection stays open, unanswered.
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What it was answered (`None` when it was left hanging).
    pub answered: Option<u16>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

type Decide = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    decide: Mutex<Decide>,
    changed: Notify,
}

/// The receiver; it stops when dropped.
pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts a receiver at `http://127.0.0.1:PORT/hook` answering `decide(request)`.
    pub async fn start(decide: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            decide: Mutex::new(Arc::new(decide)),
            changed: Notify::new(),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, serving.clone()));
            }
        });
        Receiver { url, shared, task }
    }

    /// From now on, answers `decide(request)`.
    pub fn answer(&self, decide: impl Fn(&Request) -> Answer + Send + Sync + 'static) {
        *self.shared.decide.lock().unwrap() = Arc::new(decide);
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the requests so far; fails after `deadline` with `what`.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let requests = self.requests();
            if pred(&requests) {
                return requests;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; requests: {:#?}",
                    self.requests()
                        .iter()
                        .map(|r| (r.answered, String::from_utf8_lossy(&r.body).to_string()))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let mut request = Request {
        path,
        headers,
        body,
        answered: None,
    };
    let decide = shared.decide.lock().unwrap().clone();
    let answer = decide(&request);
    if let Answer::Status(status, _) = &answer {
        request.answered = Some(*status);
    }
    shared.requests.lock().unwrap().push(request);
    shared.changed.notify_waiters();
    match answer {
        Answer::Status(status, body) => {
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Answer::Hang => {
            // Hold the connection open until the client gives up.
            let mut sink = [0u8; 64];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}
