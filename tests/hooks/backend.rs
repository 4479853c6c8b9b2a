//! A stand-in for the application's backend: a real HTTP server (actix-web, one
//! worker) on port 0 in the test process, recording every request and answering as
//! the test tells it to, now and again later.
//!
//! Waits are polls bounded by the support's DEADLINE, never fixed sleeps.

#![allow(dead_code)]

use crate::support::DEADLINE;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the backend received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The status the backend answered it with.
    pub status: u16,
}

impl Recorded {
    /// Whether the backend took it (answered 2xx).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (Null when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How the backend answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Waits this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    respond: Mutex<Responder>,
}

/// The backend; stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: actix_web::dev::ServerHandle,
}

impl Backend {
    /// A backend answering every request `200 {}`.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            respond: Mutex::new(Arc::new(|_: &Recorded| Reply::ok(serde_json::json!({})))),
        });
        let data = shared.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::from(data.clone()))
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("backend binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            addr,
            shared,
            server: handle,
        }
    }

    /// The URL of `path` on this backend.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers from now on as `respond` says.
    pub fn respond(&self, respond: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.shared.respond.lock().unwrap() = Arc::new(respond);
    }

    /// Every request so far to `path`.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        let all = self.shared.requests.lock().unwrap();
        all.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Polls until `done` holds for the requests to `path` (bounded by DEADLINE).
    pub async fn wait_for(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        self.wait_longer(path, what, DEADLINE, done).await
    }

    /// [`Backend::wait_for`] with a deadline of its own.
    pub async fn wait_longer(
        &self,
        path: &str,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let until = Instant::now() + deadline;
        loop {
            let seen = self.requests(path);
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < until,
                "the backend never saw {what}; it saw {} requests to {path}: {:?}",
                seen.len(),
                seen.iter().map(Recorded::json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let server = self.server.clone();
        // Stopping is a future; nobody needs to wait for it.
        tokio::spawn(async move { server.stop(false).await });
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let recorded = Recorded {
        path: req.path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status: 0,
    };
    let respond = shared.respond.lock().unwrap().clone();
    let reply = respond(&recorded);
    let mut recorded = recorded;
    recorded.status = reply.status;
    shared.requests.lock().unwrap().push(recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).unwrap())
        .content_type("application/json")
        .body(reply.body)
}
