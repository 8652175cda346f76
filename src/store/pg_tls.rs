//! TLS to PostgreSQL: reads `sslmode` and `sslrootcert` from `store.url`
//! and builds the writer's rustls connector.
//!
//! The store has two PostgreSQL connections with different drivers. The
//! read pool (sqlx) parses the TLS parameters itself. The writer's
//! synchronous client knows only `sslmode=disable|prefer|require`, so its
//! URL gets the TLS parameters taken out and a connector that verifies
//! exactly as sqlx does:
//!
//! | `sslmode` | encrypted | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `allow`, `prefer` | if the server offers it | no | no |
//! | `require` | yes | no | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! Chains are checked against the public web roots plus the certificates
//! in `sslrootcert`. Client certificates (`sslcert`, `sslkey`) are refused
//! for now, so that neither connection half-supports them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How the connection is secured, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// `allow` and `prefer`: TLS when the server offers it.
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS settings of a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: PEM certificates trusted besides the public roots.
    pub root_cert: Option<PathBuf>,
}

/// What is wrong with a URL's TLS parameters. The messages never include
/// the URL, which may carry a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PgTlsError {
    #[error("sslmode={0} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    #[error(
        "{0} (a client certificate) is not supported yet; authenticate with a password \
         over sslmode=verify-full instead"
    )]
    ClientCertificate(&'static str),
    #[error(
        "sslrootcert has no effect with sslmode={0}: the server's certificate is only \
         checked with sslmode=verify-ca or verify-full"
    )]
    RootCertUnused(String),
    #[error("sslrootcert: {0}")]
    RootCert(String),
}

impl PgTls {
    /// Splits a `postgres://` URL into the URL the writer's driver accepts
    /// (the TLS parameters removed, `sslmode` mapped onto the three it
    /// knows) and the TLS settings. A URL without `sslmode` is `prefer`,
    /// as in libpq.
    pub fn from_url(url: &str) -> Result<(String, PgTls), PgTlsError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut mode = None;
        let mut mode_text = String::from("prefer");
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // `%XX` escapes: a path may need them.
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            match key {
                "sslmode" => {
                    mode = Some(parse_mode(&value)?);
                    mode_text = value;
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                "sslcert" => return Err(PgTlsError::ClientCertificate("sslcert")),
                "sslkey" => return Err(PgTlsError::ClientCertificate("sslkey")),
                _ => kept.push(pair),
            }
        }
        let mode = mode.unwrap_or(SslMode::Prefer);
        if root_cert.is_some() && !matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(PgTlsError::RootCertUnused(mode_text));
        }
        kept.push(match mode {
            SslMode::Disable => "sslmode=disable",
            SslMode::Prefer => "sslmode=prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "sslmode=require",
        });
        Ok((
            format!("{base}?{}", kept.join("&")),
            PgTls { mode, root_cert },
        ))
    }

    /// The certificates of `sslrootcert`, read and parsed (none without it).
    pub fn root_certificates(&self) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
        let Some(path) = &self.root_cert else {
            return Ok(Vec::new());
        };
        read_certificates(path)
    }

    /// The rustls configuration the writer connects with.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PgTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                for cert in self.root_certificates()? {
                    roots
                        .add(cert)
                        .map_err(|e| PgTlsError::RootCert(format!("unusable certificate: {e}")))?;
                }
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| PgTlsError::RootCert(e.to_string()))?;
                Some(verifier)
            }
        };
        let verifier = Arc::new(PgVerifier {
            provider: provider.clone(),
            chain,
            check_name: self.mode == SslMode::VerifyFull,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError::RootCert(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(config)
    }

    /// The writer's connector.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgTlsError> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            self.client_config()?,
        ))
    }
}

fn parse_mode(value: &str) -> Result<SslMode, PgTlsError> {
    Ok(match value {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => return Err(PgTlsError::UnknownMode(other.to_owned())),
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| PgTlsError::RootCert(format!("cannot read {shown}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgTlsError::RootCert(format!("{shown} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PgTlsError::RootCert(format!(
            "{shown} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

/// Checks the server as `sslmode` asks. The handshake's signatures are
/// always checked, so the peer holds the key of the certificate it sent;
/// the chain only with `verify-ca` and `verify-full` (`require` accepts any
/// certificate, as in libpq and sqlx); the name only with `verify-full`.
#[derive(Debug)]
struct PgVerifier {
    provider: Arc<CryptoProvider>,
    /// Public roots plus `sslrootcert`; `None` when the chain is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pg-tls")
            .join(name)
    }

    fn tls(mode: SslMode, root: Option<&str>) -> PgTls {
        PgTls {
            mode,
            root_cert: root.map(fixture),
        }
    }

    /// A TLS handshake in memory against a server presenting the fixture
    /// certificate (issued for 127.0.0.1 and localhost by `ca.crt`).
    fn handshake(client: &PgTls, host: &str) -> Result<(), rustls::Error> {
        let cert = CertificateDer::from_pem_file(fixture("server.crt")).unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client.client_config().unwrap()), name).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn unknown_issuer(result: Result<(), rustls::Error>) -> bool {
        matches!(
            result,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        )
    }

    fn wrong_name(result: Result<(), rustls::Error>) -> bool {
        matches!(
            result,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        )
    }

    #[test]
    fn verify_full_checks_the_chain_and_the_name() {
        let full = tls(SslMode::VerifyFull, Some("ca.crt"));
        assert_eq!(handshake(&full, "127.0.0.1"), Ok(()));
        assert_eq!(handshake(&full, "localhost"), Ok(()));
        assert!(wrong_name(handshake(&full, "db.example")));
        let other = tls(SslMode::VerifyFull, Some("other-ca.crt"));
        assert!(unknown_issuer(handshake(&other, "127.0.0.1")));
        // Without sslrootcert only the public roots are trusted.
        assert!(unknown_issuer(handshake(
            &tls(SslMode::VerifyFull, None),
            "127.0.0.1"
        )));
    }

    #[test]
    fn verify_ca_checks_the_chain_but_not_the_name() {
        let ca = tls(SslMode::VerifyCa, Some("ca.crt"));
        assert_eq!(handshake(&ca, "db.example"), Ok(()));
        let other = tls(SslMode::VerifyCa, Some("other-ca.crt"));
        assert!(unknown_issuer(handshake(&other, "db.example")));
    }

    #[test]
    fn require_encrypts_whatever_the_certificate() {
        assert_eq!(
            handshake(&tls(SslMode::Require, None), "db.example"),
            Ok(())
        );
    }

    #[test]
    fn the_writer_url_keeps_everything_but_the_tls_parameters() {
        let (url, tls) = PgTls::from_url(
            "postgres://sb:p%40ss@db:5432/sb?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20file.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://sb:p%40ss@db:5432/sb?connect_timeout=5&application_name=x&sslmode=require"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca file.pem")));

        let (url, tls) = PgTls::from_url("postgres://sb@db/sb").unwrap();
        assert_eq!(url, "postgres://sb@db/sb?sslmode=prefer");
        assert_eq!(tls.mode, SslMode::Prefer);
        for (given, driver) in [
            ("disable", "disable"),
            ("allow", "prefer"),
            ("prefer", "prefer"),
            ("require", "require"),
            ("verify-ca", "require"),
        ] {
            let (url, _) = PgTls::from_url(&format!("postgres://db/sb?sslmode={given}")).unwrap();
            assert_eq!(url, format!("postgres://db/sb?sslmode={driver}"), "{given}");
            assert!(url.parse::<::postgres::Config>().is_ok(), "{given}");
        }
    }

    #[test]
    fn bad_tls_parameters_are_refused_with_the_reason() {
        let err = |url: &str| PgTls::from_url(url).unwrap_err().to_string();
        assert!(err("postgres://db/sb?sslmode=strict").contains("sslmode=strict is not one of"));
        assert!(err("postgres://db/sb?sslmode=verify-full&sslcert=c.pem").contains("sslcert"));
        assert!(err("postgres://db/sb?sslkey=k.pem").contains("sslkey"));
        let unused = err("postgres://db/sb?sslmode=require&sslrootcert=ca.pem");
        assert!(
            unused.contains("no effect with sslmode=require"),
            "{unused}"
        );
        let missing = tls(SslMode::VerifyFull, Some("no-such.crt"))
            .root_certificates()
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read") && missing.contains("no-such.crt"),
            "{missing}"
        );
        let not_pem = tls(SslMode::VerifyFull, Some("generate.sh"))
            .root_certificates()
            .unwrap_err()
            .to_string();
        assert!(not_pem.contains("holds no PEM certificate"), "{not_pem}");
    }
}
