//! TLS for both of imsg's ports, from PEM files that may change under a
//! running server.
//!
//! - The public port (gateway) serves a certificate and key; clients trust
//!   it through the system's or a custom CA.
//! - The internal port (broker) is mutual: it also requires a client
//!   certificate issued by the internal CA, and gateways and brokers
//!   present theirs when they call it. Without one the handshake fails, so
//!   nothing that merely reaches a broker port can act as a user.
//!
//! Certificates are rotated by replacing the files (a Kubernetes secret
//! update or cert-manager renewal does exactly that). [`ReloadingTls`]
//! notices within a second and builds the next handshake from the new
//! files; connections already open keep the certificate they started with.
//! A rotation to files that do not load is refused with a warning and the
//! previous certificate stays in service.
//!
//! rustls with the ring provider, chosen explicitly: the process holds more
//! than one provider (reqwest brings aws-lc-rs), so rustls cannot pick one.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

/// How often a server looks at its files for a rotation.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files a TLS server is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these
    /// CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten()
    }

    /// Builds the rustls configuration from the files as they are now.
    fn load(&self) -> Result<ServerConfig, String> {
        let chain = read_certs(&self.cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| format!("TLS key {}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                    .build()
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("TLS certificate {} and key {}: {e}", self.cert.display(), self.key.display()))?;
        // gRPC clients (grpc-core in particular) insist on HTTP/2 by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// What the files look like now, to notice a rotation.
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    parse_certs(&read_file(path)?, path)
}

/// The certificates of `pem`, read from `path` (named in errors).
fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificates {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("certificates {}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| format!("CA {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A TLS server configuration that follows its files.
#[derive(Debug)]
pub struct ReloadingTls {
    files: ServerTlsFiles,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

impl ReloadingTls {
    /// Loads the files; an error names the file that does not load.
    pub fn load(files: ServerTlsFiles) -> Result<Arc<Self>, String> {
        let stamps = files.stamps();
        let config = Arc::new(files.load()?);
        Ok(Arc::new(Self { files, loaded: Mutex::new(Loaded { config, stamps, checked: Instant::now() }) }))
    }

    /// The configuration for the next handshake, reloaded first if the
    /// files changed since they were last looked at.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK {
            loaded.checked = Instant::now();
            let stamps = self.files.stamps();
            if stamps != loaded.stamps {
                match self.files.load() {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        loaded.config = Arc::new(config);
                        loaded.stamps = stamps;
                    }
                    // Half-written files during a rotation: try again at
                    // the next check (the stamps are not taken).
                    Err(error) => tracing::warn!(%error, "TLS files changed but do not load; keeping the previous"),
                }
            }
        }
        loaded.config.clone()
    }
}

/// Accepted connections, after their TLS handshake, for tonic's
/// `serve_with_incoming*`. Handshakes run concurrently, so a slow or
/// failing client does not hold up the others; a failed one is logged at
/// debug level and dropped (a client without a valid certificate on the
/// internal port ends here).
pub fn incoming(listener: TcpListener, tls: Arc<ReloadingTls>) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (ready, connections) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Events are small frames that must not wait for delayed ACKs.
            let _ = socket.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(connections)
}

/// What a client needs to call a TLS server: the CA to trust and, for the
/// internal port, its own certificate and key.
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trusts the CAs in `ca` (PEM); presents `identity` (cert, key) when
    /// given.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, String> {
        // Parsed now, so a wrong file is named at start, not at first call.
        let ca_pem = read_file(ca)?;
        parse_certs(&ca_pem, ca)?;
        let identity = match identity {
            Some((cert, key)) => {
                let (cert_pem, key_pem) = (read_file(cert)?, read_file(key)?);
                parse_certs(&cert_pem, cert)?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
                Some((cert_pem, key_pem))
            }
            None => None,
        };
        Ok(Self { ca_pem, identity })
    }

    /// The tonic form; the server name is taken from each URL's host.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => config,
        }
    }
}
