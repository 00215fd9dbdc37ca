//! HTTP surface (axum): client, federation, key, media, admin, well-known, metrics.
