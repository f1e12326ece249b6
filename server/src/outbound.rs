//! HTTP requests rollcall makes to the application's backend (webhooks, the join hook): one
//! JSON `POST` per connection over HTTP/1.1, `http://` or `https://` (TLS with the system's CA
//! certificates, or the PEM file named by `SSL_CERT_FILE`).
//!
//! Deliberately small: no redirects, no proxies, no keep-alive (webhooks go out in batches, the
//! join hook once per join). Time limits are the caller's (`tokio::time::timeout`); sizes are
//! bounded here, so a hostile or broken backend cannot make a node buffer without limit.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Largest response head read (status line and headers), in bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body read, in bytes.
pub const MAX_BODY: usize = 256 * 1024;

/// Where requests go: a parsed `http://` or `https://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, as sent in the request line.
    target: String,
    /// `Host` header value.
    authority: String,
    /// The URL without credentials or query, for logs.
    shown: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Endpoint {
    /// Reads an `http://` or `https://` URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "{text:?}: the scheme must be http or https, not {other}"
                ))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported"
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{text:?} has no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{text:?} has no port"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut target = url.path().to_string();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let shown = format!("{}://{authority}{}", url.scheme(), url.path());
        Ok(Endpoint {
            tls,
            host,
            port,
            target,
            authority,
            shown,
        })
    }
}

/// What a backend answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body (at most [`MAX_BODY`] bytes), chunked encoding removed.
    pub body: Vec<u8>,
}

impl Response {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum OutboundError {
    /// The connection could not be made.
    Connect(std::io::Error),
    /// TLS could not be set up (no CA certificates) or the handshake failed.
    Tls(String),
    /// Reading or writing failed.
    Io(std::io::Error),
    /// The answer is not HTTP, or is larger than allowed.
    BadResponse(String),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Connect(e) => write!(f, "cannot connect: {e}"),
            OutboundError::Tls(e) => write!(f, "TLS: {e}"),
            OutboundError::Io(e) => write!(f, "connection failed: {e}"),
            OutboundError::BadResponse(e) => write!(f, "bad response: {e}"),
        }
    }
}

impl std::error::Error for OutboundError {}

/// The TLS client configuration, built once: the system's CA certificates (or
/// `SSL_CERT_FILE`'s).
fn tls_connector() -> Result<TlsConnector, OutboundError> {
    static CONNECTOR: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no CA certificates found (set SSL_CERT_FILE to a PEM file): {:?}",
                    found.errors
                ));
            }
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(config)))
        })
        .clone()
        .map_err(OutboundError::Tls)
}

/// `POST`s `body` (JSON) to `endpoint` with the extra `headers`, and reads the answer.
pub async fn post_json(
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, OutboundError> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(OutboundError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if !endpoint.tls {
        return exchange(tcp, endpoint, headers, body).await;
    }
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| OutboundError::Tls(format!("{}: {e}", endpoint.host)))?;
    let tls = tls_connector()?
        .connect(name, tcp)
        .await
        .map_err(|e| OutboundError::Tls(e.to_string()))?;
    exchange(tls, endpoint, headers, body).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, OutboundError> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nuser-agent: rollcall/{}\r\n",
        endpoint.target,
        endpoint.authority,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(OutboundError::Io)?;
    stream.write_all(body).await.map_err(OutboundError::Io)?;
    stream.flush().await.map_err(OutboundError::Io)?;
    read_response(&mut stream).await
}

/// Reads one HTTP/1.1 response: its head, then a body by `content-length`, by chunks, or to the
/// end of the connection.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Response, OutboundError> {
    let mut buf = Vec::with_capacity(1024);
    let (status, body_start, framing) = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(OutboundError::Io)?;
        if n == 0 {
            return Err(OutboundError::BadResponse(
                "connection closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = response.code.unwrap_or(0);
                break (status, len, framing(response.headers)?);
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(OutboundError::BadResponse("response head too large".into()))
            }
            Err(e) => return Err(OutboundError::BadResponse(e.to_string())),
        }
    };
    let mut rest = buf.split_off(body_start);
    let body = match framing {
        Framing::Length(len) => {
            if len > MAX_BODY {
                return Err(OutboundError::BadResponse(format!(
                    "body of {len} bytes, limit {MAX_BODY}"
                )));
            }
            while rest.len() < len {
                let mut chunk = vec![0u8; (len - rest.len()).min(16 * 1024)];
                let n = stream.read(&mut chunk).await.map_err(OutboundError::Io)?;
                if n == 0 {
                    return Err(OutboundError::BadResponse("body cut short".into()));
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            rest.truncate(len);
            rest
        }
        Framing::Chunked => dechunk(stream, rest).await?,
        Framing::ToEnd => {
            let mut limited = stream.take((MAX_BODY + 1 - rest.len().min(MAX_BODY)) as u64);
            limited
                .read_to_end(&mut rest)
                .await
                .map_err(OutboundError::Io)?;
            if rest.len() > MAX_BODY {
                return Err(OutboundError::BadResponse(format!(
                    "body over {MAX_BODY} bytes"
                )));
            }
            rest
        }
    };
    Ok(Response { status, body })
}

enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, OutboundError> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        return Ok(Framing::Chunked);
    }
    match value("content-length") {
        Some(len) => len
            .parse()
            .map(Framing::Length)
            .map_err(|_| OutboundError::BadResponse(format!("content-length {len:?}"))),
        None => Ok(Framing::ToEnd),
    }
}

/// Decodes a chunked body, `have` being what was already read past the head.
async fn dechunk<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut have: Vec<u8>,
) -> Result<Vec<u8>, OutboundError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        // A chunk-size line.
        let line_end = loop {
            if let Some(i) = have[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if have.len() - pos > 1024 {
                return Err(OutboundError::BadResponse(
                    "chunk size line too long".into(),
                ));
            }
            fill(stream, &mut have).await?;
        };
        let line = String::from_utf8_lossy(&have[pos..line_end]).to_string();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| OutboundError::BadResponse(format!("chunk size {size_text:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(OutboundError::BadResponse(format!(
                "body over {MAX_BODY} bytes"
            )));
        }
        while have.len() < pos + size + 2 {
            fill(stream, &mut have).await?;
        }
        body.extend_from_slice(&have[pos..pos + size]);
        pos += size + 2;
    }
}

async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    have: &mut Vec<u8>,
) -> Result<(), OutboundError> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.map_err(OutboundError::Io)?;
    if n == 0 {
        return Err(OutboundError::BadResponse("body cut short".into()));
    }
    have.extend_from_slice(&chunk[..n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_or_refused_with_a_reason() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hooks/rollcall?x=1").unwrap();
        assert!(!e.tls);
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 8080));
        assert_eq!(e.target, "/hooks/rollcall?x=1");
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.to_string(), "http://127.0.0.1:8080/hooks/rollcall");
        let e = Endpoint::parse("https://example.com").unwrap();
        assert!(e.tls);
        assert_eq!((e.port, e.target.as_str()), (443, "/"));
        let e = Endpoint::parse("http://[::1]:9/x").unwrap();
        assert_eq!(e.host, "::1");
        assert!(Endpoint::parse("ftp://x/y").unwrap_err().contains("scheme"));
        assert!(Endpoint::parse("nonsense").is_err());
        assert!(Endpoint::parse("http://u:p@x/")
            .unwrap_err()
            .contains("credentials"));
    }

    async fn parse(raw: &[u8]) -> Result<Response, OutboundError> {
        let mut reader = raw;
        read_response(&mut reader).await
    }

    #[tokio::test]
    async fn responses_are_read_by_length_by_chunks_and_to_the_end() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello-and-more")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"abcde"[..]));
        let r = parse(b"HTTP/1.0 500 Oops\r\n\r\nto the end").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"to the end"[..]));
        assert!(!r.is_success());
    }

    #[tokio::test]
    async fn broken_or_oversized_answers_are_errors_not_panics() {
        for raw in [
            &b""[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(
                parse(raw).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let big = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(parse(big.as_bytes()).await.is_err());
    }
}
