//! The node's HTTP client to the backend: one POST of JSON, bounded in time and in
//! the size of the answer, its result sorted into what a hook or a webhook needs to
//! know. reqwest (rustls on aws-lc-rs, the system's roots) does the HTTP; redirects
//! are not followed (a hook's URL is configured, not discovered).

use std::time::Duration;

/// What one POST came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered: its status and body (at most the bound).
    Answered { status: u16, body: Vec<u8> },
    /// No answer within the timeout.
    Timeout,
    /// No connection, or it broke; or the answer was over the size bound.
    Failed(String),
}

impl Outcome {
    /// A 2xx answer.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Answered { status, .. } if (200..300).contains(status))
    }

    /// Worth retrying: a timeout, a connection failure, 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Answered { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Timeout | Self::Failed(_) => true,
        }
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Answered { status, .. } if (200..300).contains(status) => "ok",
            Self::Answered { .. } => "status",
            Self::Timeout => "timeout",
            Self::Failed(_) => "error",
        }
    }
}

/// A shared client (it pools connections per backend).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Option<reqwest::Client>,
}

impl HttpClient {
    /// A client; one that could not be built (no TLS roots could be read) fails every
    /// call, which each hook's failure policy then handles.
    pub fn new() -> Self {
        let built = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hubbub/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build();
        match built {
            Ok(client) => Self {
                inner: Some(client),
            },
            Err(error) => {
                tracing::error!(%error, "the HTTP client for hooks and webhooks could not be built");
                Self { inner: None }
            }
        }
    }

    /// A client that fails every call (a node with no hook and no webhook).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// POSTs `body` (JSON) to `url` with `headers`, waiting at most `timeout` for the
    /// whole answer and reading at most `max_bytes` of it.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Outcome {
        let Some(client) = &self.inner else {
            return Outcome::Failed("no HTTP client".to_owned());
        };
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let exchange = async move {
            let mut response = match request.send().await {
                Ok(response) => response,
                Err(error) if error.is_timeout() => return Outcome::Timeout,
                Err(error) => return Outcome::Failed(error.to_string()),
            };
            let status = response.status().as_u16();
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > max_bytes {
                            return Outcome::Failed(format!(
                                "the answer is over {max_bytes} bytes"
                            ));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(error) => return Outcome::Failed(error.to_string()),
                }
            }
            Outcome::Answered { status, body }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Outcome::Timeout)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::disabled()
    }
}
