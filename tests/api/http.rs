//! A minimal HTTP/1.1 client over a raw socket for the server API's calls (the
//! tests need no HTTP client crate): one request per connection, `Connection: close`,
//! every wait bounded.

#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest one call may take.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// An answer: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The error code of a failed call's `{"error": {"code"}}`.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }
}

/// Where calls go and with which key.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub key: Option<String>,
}

impl Api {
    pub fn new(addr: SocketAddr, key: &str) -> Self {
        Self {
            addr,
            key: Some(key.to_owned()),
        }
    }

    /// The same API with another key (None: no Authorization header).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self {
            addr: self.addr,
            key: key.map(str::to_owned),
        }
    }

    /// POST `path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, body.to_string().as_bytes()).await
    }

    /// POST `path` with these bytes as the body.
    pub async fn post_raw(&self, path: &str, body: &[u8]) -> Answer {
        let mut headers = self.auth();
        headers.push(("Content-Type".into(), "application/json".into()));
        headers.push(("Content-Length".into(), body.len().to_string()));
        request(self.addr, "POST", path, &headers, body).await
    }

    /// POST `path` with a chunked body (no Content-Length).
    pub async fn post_chunked(&self, path: &str, body: &[u8]) -> Answer {
        let mut headers = self.auth();
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
        let mut chunked = Vec::new();
        for chunk in body.chunks(4096) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        request(self.addr, "POST", path, &headers, &chunked).await
    }

    /// A request of any method without a body.
    pub async fn call(&self, method: &str, path: &str) -> Answer {
        request(self.addr, method, path, &self.auth(), b"").await
    }

    fn auth(&self) -> Vec<(String, String)> {
        match &self.key {
            Some(key) => vec![("Authorization".into(), format!("Bearer {key}"))],
            None => Vec::new(),
        }
    }

    /// POST and expect 200; the JSON answer.
    pub async fn ok(&self, path: &str, body: Value) -> Value {
        let answer = self.post(path, &body).await;
        assert_eq!(answer.status, 200, "{path} {body}: {answer:?}");
        answer.json()
    }

    /// POST and expect a refusal with `status` and `code`; the JSON answer.
    pub async fn refused(&self, path: &str, body: Value, status: u16, code: &str) -> Value {
        let answer = self.post(path, &body).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (status, code),
            "{path} {body}: {answer:?}"
        );
        answer.json()
    }
}

/// One request on a fresh connection; the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    timeout(
        CALL_DEADLINE,
        request_now(addr, method, path, headers, body),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} answered within {CALL_DEADLINE:?}"))
}

async fn request_now(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    // A server that answers before reading the whole body (413) may close early: what
    // it answered is still there to read.
    let _ = stream.write_all(&raw).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    parse(&response)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
