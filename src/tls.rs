//! Listener certificates: loading PEM pairs, checking that key and certificate match,
//! and choosing a certificate by SNI (several per listener). Used by `gatehouse check`
//! and when listeners are built, so a broken pair is a config error, never a panic.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
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

/// Loads `cert` and `key` (PEM; PKCS#1, PKCS#8 or SEC1 keys) and checks that they match.
pub fn load_pair(cert: &str, key: &str) -> Result<LoadedCert, String> {
    let certs: Vec<CertificateDer<'static>> = {
        let f = File::open(cert).map_err(|e| format!("cannot read certificate {cert:?}: {e}"))?;
        rustls_pemfile::certs(&mut BufReader::new(f))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate {cert:?} is not valid PEM: {e}"))?
    };
    if certs.is_empty() {
        return Err(format!("no certificate found in {cert:?}"));
    }
    let key_der: PrivateKeyDer<'static> = {
        let f = File::open(key).map_err(|e| format!("cannot read key {key:?}: {e}"))?;
        rustls_pemfile::private_key(&mut BufReader::new(f))
            .map_err(|e| format!("key {key:?} is not valid PEM: {e}"))?
            .ok_or_else(|| format!("no private key found in {key:?}"))?
    };
    let names = {
        let ee = webpki::EndEntityCert::try_from(&certs[0])
            .map_err(|e| format!("certificate {cert:?} cannot be parsed: {e}"))?;
        ee.valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let ck = CertifiedKey::from_der(certs, key_der, &provider())
        .map_err(|e| format!("key {key:?} does not match certificate {cert:?}: {e}"))?;
    Ok(LoadedCert {
        key: Arc::new(ck),
        names,
    })
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
