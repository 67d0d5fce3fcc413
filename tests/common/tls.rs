//! TLS for the tests: certificates made with the `openssl` command line (a CA of our own and
//! leaves it signs, in every key format the balancer reads), and a rustls client that trusts
//! that CA only. Each `Pki` lives in a temp directory removed when it is dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// How a leaf's private key is written.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// EC P-256 in PKCS#8 (`BEGIN PRIVATE KEY`).
    EcPkcs8,
    /// EC P-256 in SEC1 (`BEGIN EC PRIVATE KEY`).
    EcSec1,
    /// RSA 2048 in PKCS#8.
    RsaPkcs8,
    /// RSA 2048 in PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1,
}

/// A leaf certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// The leaf certificate's DER (the first certificate of the file): what a client sees.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert).expect("a PEM certificate").to_vec()
    }

    /// `openssl x509 -serial` of the leaf, e.g. `5A1F...`.
    pub fn serial(&self) -> String {
        let out = openssl(&["x509", "-in", path(&self.cert), "-noout", "-serial"], None);
        out.trim().trim_start_matches("serial=").to_string()
    }
}

/// A CA and the leaves it signed, in a directory of their own.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// Runs `openssl ARGS` (in `dir`), panicking with its stderr when it fails; returns stdout.
pub fn openssl(args: &[&str], dir: Option<&Path>) -> String {
    let mut command = Command::new("openssl");
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().expect("openssl on PATH (.ci/run installs it)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Pki {
    /// A new CA (EC P-256, self-signed, valid 30 days).
    pub fn new() -> Pki {
        let dir = super::unique_dir("pki");
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                path(&ca_key),
                "-out",
                path(&ca),
                "-days",
                "30",
                "-subj",
                "/CN=lb-sync test CA",
            ],
            None,
        );
        Pki { dir, ca, ca_key }
    }

    /// A leaf for `names` (DNS names; 127.0.0.1 is always added as an IP name), signed by the
    /// CA, valid from now for `days` (negative: expired that many days ago), with its key
    /// written as `kind`. `tag` names its files.
    pub fn leaf(&self, tag: &str, names: &[&str], kind: KeyKind, days: i32) -> Leaf {
        let key = self.dir.join(format!("{tag}.key"));
        let raw = self.dir.join(format!("{tag}.raw.key"));
        match kind {
            KeyKind::EcPkcs8 | KeyKind::EcSec1 => openssl(
                &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path(&raw)],
                None,
            ),
            KeyKind::RsaPkcs8 | KeyKind::RsaPkcs1 => {
                openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path(&raw)], None)
            }
        };
        match kind {
            KeyKind::EcPkcs8 | KeyKind::RsaPkcs8 => std::fs::copy(&raw, &key).map(drop).unwrap(),
            KeyKind::EcSec1 => drop(openssl(&["ec", "-in", path(&raw), "-out", path(&key)], None)),
            KeyKind::RsaPkcs1 => drop(openssl(&["rsa", "-traditional", "-in", path(&raw), "-out", path(&key)], None)),
        }
        let csr = self.dir.join(format!("{tag}.csr"));
        let cert = self.dir.join(format!("{tag}.pem"));
        let ext = self.dir.join(format!("{tag}.ext"));
        let mut alt: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        alt.push("IP:127.0.0.1".into());
        std::fs::write(
            &ext,
            format!("subjectAltName={}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n", alt.join(",")),
        )
        .unwrap();
        let subject = format!("/CN={}", names.first().copied().unwrap_or("lb-sync test"));
        openssl(&["req", "-new", "-key", path(&key), "-out", path(&csr), "-subj", &subject], None);
        let days = days.to_string();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                path(&csr),
                "-CA",
                path(&self.ca),
                "-CAkey",
                path(&self.ca_key),
                "-CAcreateserial",
                "-days",
                &days,
                "-extfile",
                path(&ext),
                "-out",
                path(&cert),
            ],
            Some(&self.dir),
        );
        Leaf { cert, key }
    }

    /// A rustls client trusting this CA only, offering `http/1.1`.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_with(&[b"http/1.1"])
    }

    /// The same, offering these ALPN protocols (none: no ALPN extension).
    pub fn client_with(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.ca).expect("CA certificate")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client limited to one TLS version.
    pub fn client_version(&self, version: &'static rustls::SupportedProtocolVersion) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.ca).expect("CA certificate")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a TLS handshake for `name` over `stream` (blocking, within its read timeout).
pub fn handshake(
    stream: TcpStream,
    client: &Arc<ClientConfig>,
    name: &str,
) -> Result<StreamOwned<ClientConnection, TcpStream>, std::io::Error> {
    let server_name = ServerName::try_from(name.to_string()).expect("a valid server name");
    let session = ClientConnection::new(Arc::clone(client), server_name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(session, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}
