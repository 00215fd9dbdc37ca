//! Several test servers that federate with each other over real TLS on loopback: a private CA
//! issues each server a certificate for its server name, every server trusts the CA
//! (`federation.trusted_ca_files`), reaches the others through `federation.destination_overrides`
//! and may connect to loopback (`federation.allow_private_addresses`).

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
};

use myelin_service::Config;
use myelin_store::DatabaseKind;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::TestServer;

/// A private certificate authority in a temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("CA directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Myelin testkit CA");
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).expect("write CA");
        TestCa { dir, issuer }
    }

    /// The CA certificate's PEM file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `host`; returns the certificate and key paths.
    pub fn issue(&self, host: &str) -> (PathBuf, PathBuf) {
        let params = CertificateParams::new(vec![host.to_owned()]).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let cert_path = self.dir.path().join(format!("{host}.crt"));
        let key_path = self.dir.path().join(format!("{host}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// An HTTPS client that trusts only this CA and reaches `servers` (name → federation
    /// address) without DNS.
    pub fn client(&self, servers: &[(&str, SocketAddr)]) -> reqwest::Client {
        let pem = std::fs::read(self.cert_path()).expect("CA file");
        let cert = reqwest::Certificate::from_pem(&pem).expect("CA parses");
        let mut builder = reqwest::Client::builder().tls_certs_only([cert]);
        for (name, addr) in servers {
            builder = builder.resolve(name, *addr);
        }
        builder.build().expect("CA client")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A loopback port free right now, for a server that binds it moments later. Taken below the
/// kernel's ephemeral range (32768 and up), from a counter that starts at a random place per
/// process: a port the OS hands to another test's `bind(0)` in the meantime can never be one
/// of these, and two calls in one process never return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        // A different start per process (pid and clock), so that concurrent test processes
        // rarely try the same ports.
        (std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()))
            % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range")
}

/// A set of servers named `names`, each on its own database of `kind`, federating with each
/// other. `customise` adjusts each config (given the server's index) before start.
pub async fn start_federation(
    kind: DatabaseKind,
    ca: &TestCa,
    names: &[&str],
    mut customise: impl FnMut(usize, &mut Config),
) -> Vec<TestServer> {
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (cert, key) = ca.issue(name);
        let server = TestServer::start_with(kind, |config| {
            config.server_name = (*name).try_into().expect("valid server name");
            config.listen.federation = SocketAddr::from(([127, 0, 0, 1], ports[i]));
            config.tls.certificate = Some(cert);
            config.tls.private_key = Some(key);
            config.federation.trusted_ca_files = vec![ca.cert_path()];
            config.federation.allow_private_addresses = true;
            for (other, port) in names.iter().zip(&ports) {
                config
                    .federation
                    .destination_overrides
                    .insert((*other).to_owned(), format!("127.0.0.1:{port}"));
            }
            customise(i, config);
        })
        .await;
        servers.push(server);
    }
    servers
}
