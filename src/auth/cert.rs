//! The identity a client certificate presents (mTLS): its subject's common name, or else its
//! first DNS or URI subject alternative name. The TLS handshake has already checked the
//! certificate against the configured client CA; this only reads the name.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub fn identity(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_string());
    }
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(n) | GeneralName::URI(n) => Some(n.to_string()),
            _ => None,
        })
}
