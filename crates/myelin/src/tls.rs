//! TLS for the federation listener: the configured PEM pair, or a self-signed certificate for the
//! server name generated into `data_dir` on first start and reused; and a [`TlsListener`] that
//! lets `axum::serve` accept TLS connections, with handshakes off the accept loop.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use myelin_service::Config;

/// File names of the generated pair inside `data_dir`.
pub const SELF_SIGNED_CERT: &str = "tls-self-signed.crt";
pub const SELF_SIGNED_KEY: &str = "tls-self-signed.key";

/// A slow or silent client may not hold a handshake slot longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls crypto provider Myelin uses everywhere: ring.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide rustls provider, for clients (reqwest) built without one. Safe to
/// call more than once.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificate and key paths in effect, generating the self-signed pair if needed.
pub fn certificate_paths(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&config.tls.certificate, &config.tls.private_key) {
        return Ok((cert.clone(), key.clone()));
    }
    let cert = config.data_dir.join(SELF_SIGNED_CERT);
    let key = config.data_dir.join(SELF_SIGNED_KEY);
    if !(cert.exists() && key.exists()) {
        generate_self_signed(config.server_name.host(), &cert, &key)?;
        tracing::warn!(
            certificate = %cert.display(),
            "no tls.certificate configured: generated a self-signed certificate; other servers \
             will not trust it unless told to"
        );
    }
    Ok((cert, key))
}

fn generate_self_signed(host: &str, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    // Brackets of an IPv6 literal server name are not part of the address.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()])
        .context("generating a self-signed certificate")?;
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, certified.cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// A rustls server configuration from PEM files, offering HTTP/2 and HTTP/1.1.
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading TLS private key {}", key_path.display()))?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and private key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS listener for `axum::serve`. A background task accepts TCP connections and runs each
/// handshake in its own task, so one slow client never blocks the others.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: ServerConfig) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    // The server stopped listening; stop accepting.
                    () = tx.closed() => return,
                };
                let (mut stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(%err, "federation listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                crate::server::no_delay(&mut stream);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task only ends when this listener is gone; wait to be dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
