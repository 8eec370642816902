//! Certificates made in tests (rcgen, ring), never checked in: a CA and leaves it signs, for
//! the TLS, QUIC, admin-HTTPS and cluster-mTLS tests.
//!
//! ```text
//! let ca = TestCa::new("test CA");
//! let server = ca.leaf("roost", &["localhost"], Usage::Server);   // PEM strings + DER
//!
//! // Files, for configs that take paths (listeners, admin HTTPS, cluster mTLS):
//! let pki = PkiDir::new("test CA");                                // a CA and a temp dir
//! let ca_pem = pki.write("ca.pem", &pki.ca.pem);                   // -> its path
//! let server = pki.write_leaf("server", "roost", &["localhost"], Usage::Server);
//! //   server.cert = <dir>/server.pem, server.key = <dir>/server.key, server.leaf = the PEMs
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::PathBuf;

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's (TLS listener, admin API).
    Server,
    /// A client's (device certificates).
    Client,
    /// Both ends (a cluster node dials and is dialled with one certificate).
    Both,
}

/// A certificate authority made for a test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: Vec<u8>,
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The private key, DER (PKCS#8).
    pub key_der: Vec<u8>,
}

impl TestCa {
    /// A new CA with this common name.
    ///
    /// # Panics
    /// If rcgen cannot make a key (it can on every machine the tests run on).
    pub fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf with common name `cn` and these DNS subject alternative names.
    ///
    /// # Panics
    /// If rcgen refuses a name (the tests pass fixed, valid ones).
    pub fn leaf(&self, cn: &str, sans: &[&str], usage: Usage) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut p = CertificateParams::new(sans).expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

/// A [`TestCa`] and a temporary directory for the files a test hands to a config by path;
/// the directory and everything in it go when this is dropped.
pub struct PkiDir {
    /// The CA; its certificate is only on disk once written ([`PkiDir::write`]).
    pub ca: TestCa,
    dir: tempfile::TempDir,
}

/// A leaf certificate written to disk by [`PkiDir::write_leaf`].
#[derive(Debug, Clone)]
pub struct LeafFiles {
    /// The certificate's file, `<name>.pem`.
    pub cert: PathBuf,
    /// The key's file, `<name>.key`.
    pub key: PathBuf,
    /// What was written (and the DER forms).
    pub leaf: Leaf,
}

impl PkiDir {
    /// A new CA with this common name and an empty temporary directory.
    ///
    /// # Panics
    /// If no temporary directory can be made, or as [`TestCa::new`].
    pub fn new(ca_name: &str) -> PkiDir {
        PkiDir {
            ca: TestCa::new(ca_name),
            dir: tempfile::tempdir().expect("a temporary directory for test certificates"),
        }
    }

    /// Where a file called `name` in the directory is (or would be).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to the file `name` in the directory (replacing it); returns its path.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// A new leaf signed by the CA ([`TestCa::leaf`]), its certificate written to
    /// `<name>.pem` and its key to `<name>.key` (replacing earlier ones).
    ///
    /// # Panics
    /// As [`TestCa::leaf`] and [`PkiDir::write`].
    pub fn write_leaf(&self, name: &str, cn: &str, sans: &[&str], usage: Usage) -> LeafFiles {
        let leaf = self.ca.leaf(cn, sans, usage);
        LeafFiles {
            cert: self.write(&format!("{name}.pem"), &leaf.cert_pem),
            key: self.write(&format!("{name}.key"), &leaf.key_pem),
            leaf,
        }
    }
}
