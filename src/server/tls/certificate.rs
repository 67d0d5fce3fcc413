//! A certificate chain and its private key, read from PEM files and checked before they are
//! served: readable, parseable, the key matching the certificate, and valid now. Every refusal
//! is one line naming the file at fault, so a start or a reload can say exactly what is wrong.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::x509::{self, CertFacts};

/// Larger than any real PEM chain or key: a path to something else (`/dev/zero`) is refused
/// rather than read without end.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A certificate chain with its key, ready to serve.
///
/// ```no_run
/// use lb_sync::server::Certificate;
/// // The key may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC); it may sit in the certificate's file too.
/// let certificate = Certificate::load("/etc/lb/cert.pem".as_ref(), "/etc/lb/key.pem".as_ref()).unwrap();
/// println!("{}", certificate.describe());
/// ```
pub struct Certificate {
    key: Arc<CertifiedKey>,
    facts: CertFacts,
    path: PathBuf,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Certificate {
    /// Reads and checks a PEM certificate chain (leaf first) and its private key. `Err` is one
    /// line naming the file at fault: unreadable, no certificate or key in it, a key that does
    /// not match the certificate, a certificate expired or not yet valid.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Certificate, String> {
        Certificate::load_at(cert_path, key_path, SystemTime::now())
    }

    /// [`load`](Self::load), with validity checked at `now`.
    pub fn load_at(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<Certificate, String> {
        let what = |e: &dyn std::fmt::Display| format!("TLS certificate {}: {e}", cert_path.display());
        let pem = read_pem(cert_path).map_err(|e| what(&e))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| what(&format_args!("bad PEM: {e}")))?;
        let leaf = chain.first().ok_or_else(|| what(&"no PEM certificate (BEGIN CERTIFICATE) in it"))?;
        let facts = x509::read(leaf).ok_or_else(|| what(&"its first certificate is not a DER X.509 certificate"))?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        if now > facts.not_after {
            return Err(format!(
                "TLS certificate {} expired on {} (serial {})",
                cert_path.display(),
                x509::format_utc(facts.not_after),
                facts.serial
            ));
        }
        if now < facts.not_before {
            return Err(format!(
                "TLS certificate {} is not valid before {} (serial {})",
                cert_path.display(),
                x509::format_utc(facts.not_before),
                facts.serial
            ));
        }

        let key_what = |e: &dyn std::fmt::Display| format!("TLS key {}: {e}", key_path.display());
        let key_pem = if key_path == cert_path { pem } else { read_pem(key_path).map_err(|e| key_what(&e))? };
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                key_what(&"no PEM private key in it (PKCS#8, RSA PRIVATE KEY or EC PRIVATE KEY)")
            }
            e => key_what(&format_args!("bad PEM: {e}")),
        })?;
        let signing_key = super::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| key_what(&format_args!("unusable key: {e}")))?;
        let key = CertifiedKey::new(chain, signing_key);
        match key.keys_match() {
            // ring cannot say for every key type; rustls itself treats that as no mismatch.
            Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(format!(
                    "TLS key {} does not match the certificate {}",
                    key_path.display(),
                    cert_path.display()
                ))
            }
            Err(e) => return Err(what(&format_args!("unusable: {e}"))),
        }
        Ok(Certificate { key: Arc::new(key), facts, path: cert_path.to_path_buf() })
    }

    /// One line for the log: file, serial, names and end of validity.
    pub fn describe(&self) -> String {
        let names = if self.facts.dns_names.is_empty() { "none".to_string() } else { self.facts.dns_names.join(", ") };
        format!(
            "{} (serial {}, DNS names {names}, valid until {})",
            self.path.display(),
            self.facts.serial,
            x509::format_utc(self.facts.not_after)
        )
    }

    /// The serial number in hex, as `openssl x509 -serial` prints it.
    pub fn serial(&self) -> &str {
        &self.facts.serial
    }

    /// The DNS names it is valid for (its subjectAltName), lowercase.
    pub fn dns_names(&self) -> &[String] {
        &self.facts.dns_names
    }

    /// Whether `name` is one of its DNS names exactly (`exact`), or matches one of its
    /// wildcards (`*.example.com` covers `a.example.com`, one label only, RFC 6125 6.4.3).
    pub(crate) fn matches(&self, name: &str, exact: bool) -> bool {
        self.facts.dns_names.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(parent) => {
                !exact && name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
            }
            None => exact && pattern == name,
        })
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

/// A PEM file's bytes, bounded.
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("larger than {} KiB: not a PEM certificate or key", MAX_PEM_BYTES / 1024));
    }
    Ok(bytes)
}
