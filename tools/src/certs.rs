//! Certificate generation for a cluster: one CA, one certificate per node
//! (valid as both TLS server and client, for the public port and for mutual
//! TLS between peers) and an admin client certificate for tools and tests.
//!
//! Used by `quorumkv certs` for real deployments and by `quorumkv dev`.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

const CA_NAME: &str = "quorumkv cluster CA";

/// A loaded or freshly made CA able to sign certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// Paths of one written certificate and its key.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

impl Ca {
    /// Loads `dir/ca-key.pem` (with `dir/ca.pem` beside it); never creates
    /// one.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let key_path = dir.join("ca-key.pem");
        let pem = fs::read_to_string(&key_path).map_err(|source| CertError::Io { path: key_path, source })?;
        let key = KeyPair::from_pem(&pem)?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// Loads `dir/ca.pem` + `dir/ca-key.pem`, or creates them when absent.
    ///
    /// A loaded CA is re-issued in memory from its key and fixed name: the
    /// certificates it signs then carry the same issuer and key identifier,
    /// so they verify against the `ca.pem` already distributed.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CertError> {
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca.pem");
        if key_path.exists() && cert_path.exists() {
            return Ca::load(dir);
        }
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        Ok(Ca { cert, key })
    }

    /// Signs a certificate for `name` with `sans` (DNS names or IP addresses),
    /// usable as TLS server and client, and writes `<dir>/<name>.pem` and
    /// `<dir>/<name>-key.pem`. Existing files are kept, so re-running is safe.
    pub fn issue(&self, dir: &Path, name: &str, sans: &[String]) -> Result<CertPaths, CertError> {
        let paths =
            CertPaths { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) };
        if paths.cert.exists() && paths.key.exists() {
            return Ok(paths);
        }
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        write(&paths.cert, &cert.pem(), false)?;
        write(&paths.key, &key.serialize_pem(), true)?;
        Ok(paths)
    }
}

/// The SANs a node certificate gets by default: its id, `localhost` and the
/// loopback address, plus whatever the operator adds.
pub fn default_sans(node: &str, extra: &[String]) -> Vec<String> {
    let mut sans = vec![node.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_signs_its_own_certificate_with_the_ca_of_a_secret_and_never_makes_one() {
        let secret = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert!(Ca::load(empty.path()).is_err(), "no CA there: refused, not created");
        assert!(!empty.path().join("ca-key.pem").exists());
        Ca::load_or_create(secret.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let ca = Ca::load(secret.path()).unwrap();
        let sans = default_sans("quorumkv-3", &["quorumkv-peers.quorumkv.svc.cluster.local".to_string()]);
        let paths = ca.issue(out.path(), "quorumkv-3", &sans).unwrap();
        assert!(!out.path().join("ca-key.pem").exists(), "the CA key is not copied next to the pod's");
        let roots = quorumkv::tls::load_roots(&secret.path().join("ca.pem")).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            quorumkv::tls::provider(),
        )
        .build()
        .unwrap();
        let chain = quorumkv::tls::load_certs(&paths.cert).unwrap();
        verifier
            .verify_client_cert(&chain[0], &[], rustls_pki_types::UnixTime::now())
            .expect("chains to the CA");
    }

    #[test]
    fn issued_certificates_chain_to_a_reloaded_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let first = ca.issue(dir.path(), "node1", &default_sans("node1", &[])).unwrap();
        drop(ca);
        // A second run reuses the CA on disk and must still sign valid certs.
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let second = ca.issue(dir.path(), "node2", &default_sans("node2", &[])).unwrap();
        let roots = quorumkv::tls::load_roots(&dir.path().join("ca.pem")).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            quorumkv::tls::provider(),
        )
        .build()
        .unwrap();
        for paths in [first, second] {
            let chain = quorumkv::tls::load_certs(&paths.cert).unwrap();
            verifier
                .verify_client_cert(&chain[0], &[], rustls_pki_types::UnixTime::now())
                .expect("certificate chains to the CA");
        }
    }
}
