//! PostgreSQL from a Worker: tokio-postgres over a Workers TCP socket.
//!
//! The connection string is a standard libpq URL (`postgres://user:pass@host:port/db?sslmode=require`).
//! `sslmode=require` (Neon in production) upgrades the socket with StartTLS;
//! anything else connects in plain text, which is only sensible on loopback
//! in local development.

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};
use worker::postgres_tls::PassthroughTls;
use worker::{SecureTransport, Socket};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("could not open a socket to PostgreSQL at {host}:{port}: {reason}")]
    Socket { host: String, port: u16, reason: String },
    #[error("PostgreSQL handshake failed: {0}")]
    Handshake(#[from] tokio_postgres::Error),
}

/// Opens one connection. Workers cannot share a socket across requests, so
/// callers connect per request (Hyperdrive pools in production).
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let config: Config = url.parse().map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        _ => return Err(DbError::BadUrl("a TCP host name is required".into())),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let tls = matches!(config.get_ssl_mode(), SslMode::Require);
    let builder = Socket::builder();
    let builder = if tls { builder.secure_transport(SecureTransport::StartTls) } else { builder };
    let socket = builder.connect(host.clone(), port).map_err(|e| DbError::Socket {
        host: host.clone(),
        port,
        reason: e.to_string(),
    })?;
    let client = if tls {
        let (client, connection) = config.connect_raw(socket, PassthroughTls).await?;
        wasm_bindgen_futures::spawn_local(async move {
            let _ = connection.await;
        });
        client
    } else {
        let (client, connection) = config.connect_raw(socket, NoTls).await?;
        wasm_bindgen_futures::spawn_local(async move {
            let _ = connection.await;
        });
        client
    };
    Ok(client)
}
