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

/// A loopback port free right now (the OS picks it; a server binds it moments later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
