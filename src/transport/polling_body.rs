//! A polling POST's body, read whole: at most `socketio.max_payload_bytes`, and held
//! against the node's budget for bytes still arriving (`limits.node_inbound_bytes`,
//! [`InboundBudget`](super::inbound_budget::InboundBudget)) while it waits for more.
//! Both the holder of a session (`socketio.rs`) and a node relaying to it
//! (`socketio_forward.rs`) read bodies this way.

use super::inbound_budget::Hold;
use actix_web::web::{self, BytesMut};
use futures_util::Stream;
use std::pin::Pin;
use std::task::Poll;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The connection failed while the body was arriving (400).
    Broken,
    /// Past `max` bytes (413, as Engine.IO answers).
    TooLarge,
    /// The node is past its budget and this body was among the oldest still arriving
    /// (503).
    Shed,
}

/// Reads `body` to its end, at most `max` bytes. While it waits for more, what it has
/// is held with `hold`; it is released when the body is read (or not).
pub async fn read(mut body: web::Payload, max: u64, mut hold: Hold) -> Result<BytesMut, BodyError> {
    let mut bytes = BytesMut::new();
    std::future::poll_fn(|cx| loop {
        if hold.is_shed() {
            return Poll::Ready(Err(BodyError::Shed));
        }
        match Pin::new(&mut body).poll_next(cx) {
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(BodyError::Broken)),
            Poll::Ready(Some(Ok(chunk))) => {
                if (bytes.len() + chunk.len()) as u64 > max {
                    return Poll::Ready(Err(BodyError::TooLarge));
                }
                bytes.extend_from_slice(&chunk);
            }
            // Waiting for more: only now does the body hold anything of the budget (one
            // that arrives in one read never takes a hold).
            Poll::Pending => {
                if !bytes.is_empty() && hold.set(bytes.len() as u64, cx).is_err() {
                    return Poll::Ready(Err(BodyError::Shed));
                }
                return Poll::Pending;
            }
        }
    })
    .await?;
    Ok(bytes)
}
