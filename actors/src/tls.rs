//! TLS for `wss://` signalling: the system's root certificates plus, optionally, extra roots
//! the application trusts (e.g. the CA of a development server's self-signed certificate).
//! The crypto provider is named here (aws-lc-rs, which the server's DTLS uses too), so the
//! client does not depend on which provider the process installed first.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra roots are not PEM certificates.
    #[error("extra CA certificates: {0}")]
    ExtraCa(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A rustls client configuration trusting the system roots and `extra_ca_pem` (PEM
/// certificates, possibly several). System roots that fail to load are skipped (logged), as
/// long as some root is left to trust.
pub fn client_config(extra_ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = extra_ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::ExtraCa(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::ExtraCa("no PEM certificate found".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsError::ExtraCa(e.to_string()))?;
        }
    }
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates");
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no root certificates: the system has none and no extra CA was given".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_extra_roots_are_refused_clearly() {
        let e = client_config(Some("not a certificate")).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = client_config(Some(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("extra CA certificates"), "{e}");
    }
}
