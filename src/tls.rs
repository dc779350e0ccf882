//! Listener certificates: loading PEM pairs, checking that key and certificate match,
//! and choosing a certificate by SNI (several per listener). Pairs are loaded once, when
//! a config compiles (`compile`), so a broken pair is a config error with its YAML path,
//! never a panic; `run` builds the TLS listeners from what was loaded then.

use crate::config::{Config, ConfigError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

/// A loaded certificate chain with its key and the DNS names it serves.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate/key pair cannot be used. Each names the file it is about.
#[derive(Debug)]
pub enum CertError {
    ReadCert(String, std::io::Error),
    CertPem(String, std::io::Error),
    NoCert(String),
    ReadKey(String, std::io::Error),
    KeyPem(String, std::io::Error),
    NoKey(String),
    CertParse(String, webpki::Error),
    Mismatch {
        key: String,
        cert: String,
        error: rustls::Error,
    },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::ReadCert(c, e) => write!(f, "cannot read certificate {c:?}: {e}"),
            CertError::CertPem(c, e) => write!(f, "certificate {c:?} is not valid PEM: {e}"),
            CertError::NoCert(c) => write!(f, "no certificate found in {c:?}"),
            CertError::ReadKey(k, e) => write!(f, "cannot read key {k:?}: {e}"),
            CertError::KeyPem(k, e) => write!(f, "key {k:?} is not valid PEM: {e}"),
            CertError::NoKey(k) => write!(f, "no private key found in {k:?}"),
            CertError::CertParse(c, e) => write!(f, "certificate {c:?} cannot be parsed: {e}"),
            CertError::Mismatch { key, cert, error } => {
                write!(
                    f,
                    "key {key:?} does not match certificate {cert:?}: {error}"
                )
            }
        }
    }
}

impl std::error::Error for CertError {}

/// Loads `cert` and `key` (PEM; PKCS#1, PKCS#8 or SEC1 keys) and checks that they match.
pub fn load_pair(cert: &str, key: &str) -> Result<LoadedCert, CertError> {
    let certs: Vec<CertificateDer<'static>> = {
        let f = File::open(cert).map_err(|e| CertError::ReadCert(cert.into(), e))?;
        rustls_pemfile::certs(&mut BufReader::new(f))
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::CertPem(cert.into(), e))?
    };
    if certs.is_empty() {
        return Err(CertError::NoCert(cert.into()));
    }
    let key_der: PrivateKeyDer<'static> = {
        let f = File::open(key).map_err(|e| CertError::ReadKey(key.into(), e))?;
        rustls_pemfile::private_key(&mut BufReader::new(f))
            .map_err(|e| CertError::KeyPem(key.into(), e))?
            .ok_or_else(|| CertError::NoKey(key.into()))?
    };
    let names = {
        let ee = webpki::EndEntityCert::try_from(&certs[0])
            .map_err(|e| CertError::CertParse(cert.into(), e))?;
        ee.valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let ck = CertifiedKey::from_der(certs, key_der, &provider()).map_err(|error| {
        CertError::Mismatch {
            key: key.into(),
            cert: cert.into(),
            error,
        }
    })?;
    Ok(LoadedCert {
        key: Arc::new(ck),
        names,
    })
}

/// The certificates of every TLS listener, by listener name: each pair of
/// `listeners[i].tls.certificates` loaded and checked once, every failure reported
/// under its YAML path. A listener with a failed pair (or none: validation says so) has
/// no entry.
pub fn compile(cfg: &Config, errs: &mut Vec<ConfigError>) -> BTreeMap<String, Arc<SniResolver>> {
    let mut out = BTreeMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let mut certs = Vec::with_capacity(tls.certificates.len());
        let before = errs.len();
        for (j, c) in tls.certificates.iter().enumerate() {
            match load_pair(&c.cert, &c.key) {
                Ok(loaded) => certs.push(loaded),
                Err(e) => errs.push(ConfigError::new(
                    format!("listeners[{i}].tls.certificates[{j}]"),
                    e.to_string(),
                )),
            }
        }
        if errs.len() > before {
            continue;
        }
        if let Some(resolver) = SniResolver::new(certs) {
            out.insert(l.name.clone(), Arc::new(resolver));
        }
    }
    out
}

/// Chooses a listener certificate from the SNI name: an exact name first, then a
/// `*.` wildcard one label up, then the first certificate (clients without SNI).
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(certs: Vec<LoadedCert>) -> Option<Self> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(c.key.clone()),
                    None => exact.entry(n.clone()).or_insert(c.key.clone()),
                };
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return k.clone();
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}
