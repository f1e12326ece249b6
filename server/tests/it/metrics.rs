//! `GET /metrics` over real sockets on 127.0.0.1: the gauges follow joins, leaves and closes,
//! counters count, and the text is valid Prometheus exposition format (checked by a small
//! parser below, strict about what the format allows).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::support::server::{http, longpoll_open, start, start_default, Client, TestServer};
use rollcall_server::config::Security;
use rollcall_server::security::limits::RateLimit;
use rollcall_server::Config;
use serde_json::json;

/// One parsed scrape: every sample by `name{labels}` as written (labels in their order), and
/// the declared type of every family.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}"))
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

type Labels = Vec<(String, String)>;

/// Reads `{k="v",...}` from the start of `text`; returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_name(name) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the text format (0.0.4) strictly enough to catch what a Prometheus scrape refuses:
/// bad names, bad label syntax, unparsable values, a TYPE after its samples or twice, a sample
/// with no TYPE, duplicate series.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut helped = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !valid_name(name) || !helped.insert(name.to_string()) {
                return Err(at("bad or repeated HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) || parts.next().is_some() {
                return Err(at("bad TYPE line".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if scrape
                .samples
                .keys()
                .any(|s| s.split('{').next() == Some(name))
            {
                return Err(at("TYPE after samples".into()));
            }
            if scrape.types.insert(name.into(), kind.into()).is_some() {
                return Err(at("TYPE repeated".into()));
            }
            continue;
        }
        if line.starts_with('#') {
            continue; // a plain comment
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value: f64 = fields
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| at("value is not a number".into()))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at("timestamp is not an integer".into()))?;
        }
        if !scrape.types.contains_key(name) {
            return Err(at("sample without a TYPE".into()));
        }
        let series = if labels.is_empty() {
            name.to_string()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        if scrape.samples.insert(series, value).is_some() {
            return Err(at("duplicate series".into()));
        }
    }
    Ok(scrape)
}

async fn scrape(server: &TestServer) -> Scrape {
    let (status, headers, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(ct, Some("text/plain; version=0.0.4; charset=utf-8"));
    parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// Scrapes until every `(series, value)` holds, or fails at the deadline with the last values.
async fn wait_for(server: &TestServer, expected: &[(&str, f64)]) -> Scrape {
    let deadline = tokio::time::Instant::now() + crate::support::server::DEADLINE;
    loop {
        let s = scrape(server).await;
        if expected.iter().all(|(k, v)| s.samples.get(*k) == Some(v)) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            let seen: Vec<_> = expected
                .iter()
                .map(|(k, _)| (k, s.samples.get(*k)))
                .collect();
            panic!("expected {expected:?}, saw {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const WS_OPEN: &str = "rollcall_connections{transport=\"websocket\"}";

#[tokio::test]
async fn gauges_count_two_members_and_drop_when_one_leaves_then_closes() {
    let server = start_default().await;
    let mut a = Client::user(&server, "alice").await;
    let mut b = Client::user(&server, "bob").await;
    a.join("room:lobby", json!({})).await;
    let join_ref = b.join("room:lobby", json!({})).await;
    b.sync().await;
    wait_for(
        &server,
        &[
            (WS_OPEN, 2.0),
            ("rollcall_channels_joined", 2.0),
            ("rollcall_rooms_subscribed", 1.0),
            ("rollcall_rooms_with_presences", 1.0),
            ("rollcall_presences_local", 2.0),
            ("rollcall_presences_stored", 2.0),
            ("rollcall_joins_total", 2.0),
        ],
    )
    .await;

    b.push(&join_ref, "room:lobby", "phx_leave", json!({}))
        .await;
    b.sync().await;
    wait_for(
        &server,
        &[
            (WS_OPEN, 2.0),
            ("rollcall_channels_joined", 1.0),
            ("rollcall_presences_local", 1.0),
            ("rollcall_presences_stored", 1.0),
        ],
    )
    .await;

    b.ws.close(None).await.unwrap();
    drop(b);
    wait_for(
        &server,
        &[
            (WS_OPEN, 1.0),
            (
                "rollcall_connections_closed_total{reason=\"client_left\",code=\"\"}",
                1.0,
            ),
            (
                "rollcall_connections_opened_total{transport=\"websocket\"}",
                2.0,
            ),
        ],
    )
    .await;
    drop(a);
    wait_for(
        &server,
        &[
            (WS_OPEN, 0.0),
            ("rollcall_channels_joined", 0.0),
            ("rollcall_rooms_subscribed", 0.0),
            ("rollcall_rooms_with_presences", 0.0),
            ("rollcall_presences_local", 0.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_output_is_valid_exposition_format_with_help_type_and_total_suffixes() {
    let server = start_default().await;
    let mut a = Client::user(&server, "alice").await;
    a.join("room:lobby", json!({})).await;
    a.sync().await;
    let (_, _, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    let s = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    for (name, kind) in &s.types {
        assert!(name.starts_with("rollcall_"), "{name}");
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}: counters, and only counters, end in _total"
        );
    }
    for series in s.samples.keys() {
        assert!(s.types.contains_key(series.split('{').next().unwrap()));
    }
    // Every family this server promises is there.
    for family in [
        "rollcall_connections",
        "rollcall_channels_joined",
        "rollcall_presences_local",
        "rollcall_presences_stored",
        "rollcall_tracker_replicas",
        "rollcall_frames_received_total",
        "rollcall_frames_sent_total",
        "rollcall_client_events_total",
        "rollcall_rate_limited_total",
        "rollcall_connections_closed_total",
        "rollcall_pubsub_messages_sent_total",
        "rollcall_pubsub_messages_dropped_total",
        "rollcall_pubsub_bytes_sent_total",
        "rollcall_tracker_transfers_total",
    ] {
        assert!(s.types.contains_key(family), "{family} missing");
    }
    // The parser itself refuses what a scrape would.
    assert!(parse("rollcall_x 1\n").is_err(), "sample without TYPE");
    assert!(
        parse("# TYPE a gauge\na{b=\"c} 1\n").is_err(),
        "unterminated label"
    );
    assert!(parse("# TYPE a gauge\na one\n").is_err(), "bad value");
    assert!(
        parse("# TYPE a gauge\na 1\na 2\n").is_err(),
        "duplicate series"
    );
}

#[tokio::test]
async fn no_topic_or_key_appears_in_the_output() {
    let server = start_default().await;
    let mut a = Client::user(&server, "secret-user-name").await;
    a.join("room:secret-room-name", json!({})).await;
    a.sync().await;
    let (_, _, body) = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert!(body.contains("rollcall_presences_local 1\n"));
    assert!(!body.contains("secret-room-name"));
    assert!(!body.contains("secret-user-name"));
}

#[tokio::test]
async fn frames_relayed_events_and_rate_limited_replies_are_counted() {
    let server = start(Config {
        security: Security {
            event_rate: RateLimit {
                per_second: 0.001,
                burst: 2,
            },
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let mut a = Client::user(&server, "alice").await;
    let join_ref = a.join("room:lobby", json!({})).await; // the join allowance
    a.push(&join_ref, "room:lobby", "shout", json!({"x": 1}))
        .await; // token 1
    a.push(&join_ref, "room:lobby", "shout", json!({"x": 2}))
        .await; // token 2
    a.push(&join_ref, "room:lobby", "shout", json!({"x": 3}))
        .await; // over the limit
    a.sync().await; // heartbeats are not limited
    let s = wait_for(
        &server,
        &[
            ("rollcall_client_events_total", 2.0),
            ("rollcall_rate_limited_total", 1.0),
        ],
    )
    .await;
    // join, 3 events, heartbeat
    assert_eq!(s.get("rollcall_frames_received_total"), 5.0);
    assert!(s.get("rollcall_frame_bytes_received_total") > 5.0 * 20.0);
    // Replies to all five, plus the presence_state push and the own join's diff.
    assert!(s.get("rollcall_frames_sent_total") >= 7.0);
    assert!(s.get("rollcall_frame_bytes_sent_total") > 0.0);
}

#[tokio::test]
async fn a_long_poll_session_counts_as_a_longpoll_connection() {
    let server = start_default().await;
    longpoll_open(server.addr, "vsn=2.0.0&user_id=lp").await;
    wait_for(
        &server,
        &[
            ("rollcall_connections{transport=\"longpoll\"}", 1.0),
            (WS_OPEN, 0.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn metrics_off_serves_no_metrics() {
    let server = start(Config {
        metrics: false,
        ..Config::default()
    })
    .await;
    let (status, _, _) = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 404);
}

/// Starts the `rollcall` binary with `args` on a free port; returns the child and its address.
async fn binary(
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("rollcall starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(crate::support::server::DEADLINE, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("listening line");
            if let Some(a) = line.strip_prefix("rollcall listening on http://") {
                return a.parse().unwrap();
            }
        }
    })
    .await
    .expect("listening before the deadline");
    (child, addr)
}

#[tokio::test]
async fn the_binary_serves_metrics_by_default_and_not_with_metrics_false() {
    let (_on, addr) = binary(&[], &[]).await;
    let (status, _, body) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let (_off, addr) = binary(&["--metrics", "false"], &[]).await;
    assert_eq!(http(addr, "GET", "/metrics", &[], b"").await.0, 404);
    let (_env_off, addr) = binary(&[], &[("ROLLCALL_METRICS", "false")]).await;
    assert_eq!(http(addr, "GET", "/metrics", &[], b"").await.0, 404);
}

#[tokio::test]
async fn refused_connects_are_counted_by_reason() {
    let server = start(Config {
        security: Security {
            verifier: rollcall_server::security::auth::Verifier::new(&["s"]),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    for query in ["vsn=2.0.0", "vsn=9.9.9"] {
        let url = format!("ws://{}/socket/websocket?{query}", server.addr);
        assert!(tokio_tungstenite::connect_async(url).await.is_err());
    }
    wait_for(
        &server,
        &[
            ("rollcall_connects_refused_total{reason=\"token\"}", 1.0),
            ("rollcall_connects_refused_total{reason=\"version\"}", 1.0),
            ("rollcall_connects_refused_total{reason=\"origin\"}", 0.0),
            (WS_OPEN, 0.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn every_metric_family_is_documented_in_docs_operations() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let server = start_default().await;
    let s = scrape(&server).await;
    for name in s.types.keys() {
        assert!(
            page.contains(&format!("`{name}")),
            "{name} is not in docs/operations.md"
        );
    }
}

#[tokio::test]
async fn connects_over_the_per_address_limit_are_counted() {
    let server = start(Config {
        security: Security {
            max_conns_per_ip: 2,
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    // The clients come from 127.0.0.3, the scrapes from 127.0.0.1: each address has its own
    // count.
    let query = "vsn=2.0.0&user_id=a";
    let _first = Client::connect_from(&server, "127.0.0.3", query)
        .await
        .unwrap();
    let _second = Client::connect_from(&server, "127.0.0.3", query)
        .await
        .unwrap();
    assert!(Client::connect_from(&server, "127.0.0.3", query)
        .await
        .is_err());
    wait_for(
        &server,
        &[
            (
                "rollcall_connects_refused_total{reason=\"per_address\"}",
                1.0,
            ),
            (WS_OPEN, 2.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn refused_joins_are_counted_by_reason() {
    let server = start(Config {
        max_channels: 2,
        security: Security {
            max_room_members: Some(1),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let mut a = Client::user(&server, "a").await;
    a.join("room:one", json!({})).await;
    let mut b = Client::user(&server, "b").await;
    // Not a room; the room is full; a meta that is not an object.
    b.send_json(json!(["1", "1", "lobby", "phx_join", {}]))
        .await;
    b.send_json(json!(["2", "2", "room:one", "phx_join", {}]))
        .await;
    b.send_json(json!(["3", "3", "room:two", "phx_join", {"meta": 5}]))
        .await;
    // Two channels accepted, the third refused.
    b.send_json(json!(["4", "4", "room:x", "phx_join", {}]))
        .await;
    b.send_json(json!(["5", "5", "room:y", "phx_join", {}]))
        .await;
    b.send_json(json!(["6", "6", "room:z", "phx_join", {}]))
        .await;
    wait_for(
        &server,
        &[
            ("rollcall_joins_refused_total{reason=\"unmatched\"}", 1.0),
            ("rollcall_joins_refused_total{reason=\"room_full\"}", 1.0),
            ("rollcall_joins_refused_total{reason=\"bad_payload\"}", 1.0),
            (
                "rollcall_joins_refused_total{reason=\"too_many_channels\"}",
                1.0,
            ),
            ("rollcall_joins_refused_total{reason=\"not_allowed\"}", 0.0),
            ("rollcall_joins_total", 3.0),
        ],
    )
    .await;
}
