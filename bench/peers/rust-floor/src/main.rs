//! `rust-floor [ADDR]`: serves the benchmark subset of protocol v1 on ADDR (default
//! 127.0.0.1:9300) until killed.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9300".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("rust-floor listening on {}", listener.local_addr()?);
    rust_floor::serve(listener).await
}
