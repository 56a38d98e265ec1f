//! TLS to a real etcd 3.4 (feature `tls`): certificates are made here with `rcgen` (a CA, a
//! server certificate for 127.0.0.1/localhost, a client certificate, and a second CA that
//! signed nothing the server knows), the testkit starts etcd serving TLS with them.
#![cfg(feature = "tls")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::leftovers;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use succession_core::{Election, ElectionExt, ErrorKind, HealthLevel, Role};
use succession_etcd::{EtcdConfig, EtcdConfigBuilder, EtcdElection};
use succession_testkit::{unique_path, EtcdServer, EtcdTls};

const BOUND: Duration = Duration::from_secs(10);

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate and its key (PEM), for `sans`, with the given extended usages.
    fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = usages;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The PEM files of one test, in a temp dir: a CA, a server certificate for
/// 127.0.0.1/localhost signed by it, and a client certificate signed by it.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("succession test CA");
        // etcd 3.4's own gRPC gateway dials the client port with the server certificate
        // when client certificates are required, so it may also act as a client.
        let (server_cert, server_key) = ca.issue(
            "etcd",
            vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::DnsName("localhost".try_into().unwrap()),
            ],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert_pem, client_key_pem) = ca.issue(
            "succession",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), server_key).unwrap();
        Pki {
            dir,
            ca_pem: ca.pem(),
            client_cert_pem,
            client_key_pem,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// etcd serving TLS with the server certificate; with `client_auth`, it demands client
    /// certificates signed by the CA.
    async fn etcd(&self, client_auth: bool) -> EtcdServer {
        let etcd = EtcdServer::start_tls(EtcdTls {
            cert_pem_path: self.path("server.pem"),
            key_pem_path: self.path("server-key.pem"),
            client_ca_path: client_auth.then(|| self.path("ca.pem")),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
        etcd
    }

    /// A raw etcd-client for checks from the outside (trusting the CA, presenting the
    /// client certificate).
    async fn raw_client(&self, endpoint: &str) -> Client {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ));
        Client::connect([endpoint], Some(ConnectOptions::new().with_tls(tls)))
            .await
            .expect("connect a raw TLS etcd client")
    }
}

fn builder(endpoint: &str, prefix: &str, id: &str) -> EtcdConfigBuilder {
    EtcdConfig::builder()
        .endpoint(endpoint)
        .prefix(prefix)
        .id(id)
        .ttl(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
}

/// Joins `e`, which must succeed within [`BOUND`].
async fn join(e: &EtcdElection) {
    tokio::time::timeout(BOUND, e.join())
        .await
        .unwrap_or_else(|_| panic!("{} did not join within {BOUND:?}", e.id()))
        .unwrap_or_else(|err| panic!("{} failed to join: {err}", e.id()));
}

/// `e` leads, `leader()` reads its id, `close` leaves no key and no lease.
async fn leads_and_closes_cleanly(e: &EtcdElection, raw: &Client, prefix: &str) {
    join(e).await;
    let lead = e
        .wait_for_leadership(BOUND)
        .await
        .unwrap_or_else(|err| panic!("{} did not lead: {err}", e.id()));
    assert!(lead.is_current());
    let leader = e.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.id, e.id());
    assert!(leader.is_leader);
    e.close().await.unwrap();
    assert!(!lead.is_current());
    assert_eq!(leftovers(raw, prefix).await.unwrap(), Vec::<String>::new());
}

/// A participant that cannot complete the TLS handshake: `leader()` fails with a
/// retryable `Connection` error naming the certificate problem, `join` does not succeed,
/// the health says why, and `close` is prompt. Returns the error text and health reason.
async fn refused_with_a_certificate_error(e: &EtcdElection) -> (String, String) {
    let err = tokio::time::timeout(BOUND, e.leader())
        .await
        .expect("leader() answers within the bound")
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Connection, "{text}");
    assert!(err.is_retryable(), "{text}");
    assert!(
        text.contains("TLS") && text.contains("certificate"),
        "{text}"
    );
    let joining = tokio::time::timeout(Duration::from_secs(2), e.join()).await;
    assert!(
        joining.is_err(),
        "join must not succeed without a TLS handshake: {joining:?}"
    );
    let s = e
        .wait_for_status(BOUND, |s| {
            s.health.level != HealthLevel::Healthy && s.health.reason.contains("certificate")
        })
        .await
        .unwrap_or_else(|err| panic!("no certificate reason in the health: {err}"));
    assert_eq!(s.role, Role::Candidate);
    let started = Instant::now();
    e.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(e.join().await.unwrap_err().kind(), ErrorKind::Closed);
    (text, s.health.reason.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_with_the_right_ca_elects_a_leader() {
    let pki = Pki::new();
    let etcd = pki.etcd(false).await;
    let raw = pki.raw_client(&etcd.endpoint()).await;
    let prefix = unique_path("tls");
    let config = builder(&etcd.endpoint(), &prefix, "tls-a")
        .tls_ca_pem(pki.ca_pem.clone())
        .build()
        .unwrap();
    assert!(config.uses_tls());
    let a = Arc::new(EtcdElection::new(config).unwrap());
    // A second participant reaches the server by IP but checks the certificate's DNS name.
    let b = EtcdElection::new(
        builder(&etcd.addr(), &prefix, "tls-b")
            .tls_ca_pem(pki.ca_pem.clone())
            .tls_domain_name("localhost")
            .build()
            .unwrap(),
    )
    .unwrap();
    join(&a).await;
    a.wait_for_leadership(BOUND).await.unwrap();
    join(&b).await;
    let s = b
        .wait_for_status(BOUND, |s| matches!(s.role, Role::Follower { .. }))
        .await
        .unwrap();
    assert_eq!(s.health.level, HealthLevel::Healthy, "{}", s.health.reason);
    assert_eq!(b.leader().await.unwrap().expect("a leader").id, "tls-a");
    b.close().await.unwrap();
    leads_and_closes_cleanly(&a, &raw, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_with_a_wrong_ca_is_refused_with_a_certificate_error() {
    let pki = Pki::new();
    let etcd = pki.etcd(false).await;
    let raw = pki.raw_client(&etcd.endpoint()).await;
    let prefix = unique_path("tls-wrong-ca");
    let other = Ca::new("some other CA");
    let e = EtcdElection::new(
        builder(&etcd.endpoint(), &prefix, "wrong-ca")
            .tls_ca_pem(other.pem())
            .build()
            .unwrap(),
    )
    .unwrap();
    let (err, reason) = refused_with_a_certificate_error(&e).await;
    eprintln!("wrong CA: leader() failed with: {err}\nwrong CA: health reason: {reason}");
    assert!(err.contains("tls_ca_pem"), "{err}");
    // A server name the certificate does not hold is reported the same way.
    let e = EtcdElection::new(
        builder(&etcd.endpoint(), &prefix, "wrong-name")
            .tls_ca_pem(pki.ca_pem.clone())
            .tls_domain_name("etcd.example")
            .build()
            .unwrap(),
    )
    .unwrap();
    let (err, reason) = refused_with_a_certificate_error(&e).await;
    eprintln!("wrong name: leader() failed with: {err}\nwrong name: health reason: {reason}");
    assert!(err.contains("name"), "{err}");
    assert_eq!(
        leftovers(&raw, &prefix).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_client_cert_required_and_given_works() {
    let pki = Pki::new();
    let etcd = pki.etcd(true).await;
    let raw = pki.raw_client(&etcd.endpoint()).await;
    let prefix = unique_path("tls-client-cert");
    // Without a client certificate the server refuses the handshake.
    let e = EtcdElection::new(
        builder(&etcd.endpoint(), &prefix, "no-cert")
            .tls_ca_pem(pki.ca_pem.clone())
            .build()
            .unwrap(),
    )
    .unwrap();
    let (err, reason) = refused_with_a_certificate_error(&e).await;
    eprintln!(
        "no client cert: leader() failed with: {err}\nno client cert: health reason: {reason}"
    );
    assert!(err.contains("client certificate"), "{err}");
    // With one, everything works.
    let e = EtcdElection::new(
        builder(&etcd.endpoint(), &prefix, "with-cert")
            .tls_ca_pem(pki.ca_pem.clone())
            .tls_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
            .build()
            .unwrap(),
    )
    .unwrap();
    leads_and_closes_cleanly(&e, &raw, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_pem_that_does_not_parse_is_an_invalid_config_error() {
    // PEM-looking data passes `build` (a sanity check, not a parse); the parse when
    // connecting fails before any I/O, so no server is needed.
    let garbage_key = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
    let pki = Pki::new();
    let e = EtcdElection::new(
        builder("https://127.0.0.1:1", "/tls-bad-pem", "bad-pem")
            .tls_ca_pem(pki.ca_pem.clone())
            .tls_identity_pem(pki.client_cert_pem.clone(), garbage_key)
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = tokio::time::timeout(BOUND, e.leader())
        .await
        .expect("leader() answers within the bound")
        .unwrap_err();
    eprintln!("unparsable key: leader() failed with: {err}");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("tls_identity_pem"), "{err}");
    e.close().await.unwrap();
}
