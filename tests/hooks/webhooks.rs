//! Webhook delivery.
