//! The fetcher's refusals, end to end through the real client: nothing here needs the network,
//! because every case is refused before a connection is made (or, for the allowlist case, the
//! guard lets the request through and the connection itself fails). A successful fetch cannot
//! be shown on this machine: the only server a test could start listens on loopback, which the
//! guard never reaches.

use caracal_core::ports::{FetchError, IssuerKeys};
use caracal_egress::{EgressConfig, HttpsIssuerKeys};

fn fetcher(private_hosts: Option<&str>) -> HttpsIssuerKeys {
    HttpsIssuerKeys::new(&EgressConfig {
        private_hosts: private_hosts.map(str::to_owned),
        extra_ca_file: None,
    })
}

fn blocked(result: Result<serde_json::Value, FetchError>) -> String {
    match result {
        Err(FetchError::Blocked(why)) => why,
        other => panic!("expected a refusal by the egress guard, got {other:?}"),
    }
}

#[tokio::test]
async fn only_https_urls_without_credentials_are_requested() {
    let f = fetcher(None);
    for url in [
        "http://idp.example/jwks",
        "ftp://idp.example/jwks",
        "idp.example/jwks",
        "https://user:pw@idp.example/jwks",
    ] {
        assert!(
            matches!(f.fetch(url).await, Err(FetchError::NotHttps(_))),
            "{url}"
        );
    }
}

#[tokio::test]
async fn loopback_link_local_and_unspecified_are_never_reached() {
    // Even listed as allowed private hosts.
    let f = fetcher(Some(
        "127.0.0.1,localhost,169.254.169.254,[::1],0.0.0.0,[::ffff:127.0.0.1]",
    ));
    for url in [
        "https://127.0.0.1/jwks",
        "https://127.0.0.1:8443/jwks",
        "https://[::1]/jwks",
        "https://0.0.0.0/jwks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:127.0.0.1]/jwks",
        "https://[64:ff9b::7f00:1]/jwks",
        "https://[fe80::1]/jwks",
        // The URL parser turns these spellings into 127.0.0.1 before the guard looks.
        "https://0x7f.1/jwks",
        "https://2130706433/jwks",
        "https://127.1/jwks",
        // A name: refused when it resolves, not because of how it is spelt.
        "https://localhost/jwks",
        "https://LocalHost/jwks",
    ] {
        let why = blocked(f.fetch(url).await);
        assert!(why.contains("never reaches"), "{url}: {why}");
    }
}

#[tokio::test]
async fn private_ranges_need_the_allowlist() {
    let closed = fetcher(None);
    for url in [
        "https://10.0.0.1/jwks",
        "https://172.16.5.4/jwks",
        "https://192.168.1.10/jwks",
        "https://100.64.0.1/jwks",
        "https://[fd00::1]/jwks",
        "https://[::ffff:10.0.0.1]/jwks",
    ] {
        let why = blocked(closed.fetch(url).await);
        assert!(why.contains("CARACAL_PRIVATE_EGRESS_HOSTS"), "{url}: {why}");
    }
    // Allowlisted, the guard lets the request through: what fails is the connection to an
    // address nothing answers on (within the 5 s deadline), not the policy.
    let open = fetcher(Some("10.255.255.1"));
    match open.fetch("https://10.255.255.1:9/jwks").await {
        Err(FetchError::Transport(_)) => {}
        other => panic!("expected a transport failure past the guard, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unusable_extra_ca_file_fails_egress_closed() {
    let dir = std::env::temp_dir().join(format!("caracal-egress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.join("missing.pem");
    for path in [&missing, &garbage, &empty] {
        let f = HttpsIssuerKeys::new(&EgressConfig {
            private_hosts: None,
            extra_ca_file: Some(path.display().to_string()),
        });
        let problem = f.problem().map(str::to_owned);
        assert!(
            problem
                .as_deref()
                .is_some_and(|p| p.contains("CARACAL_TLS_EXTRA_CA_FILE")),
            "{}: {problem:?}",
            path.display()
        );
        // Every fetch fails, even to a destination the guard would allow.
        assert!(
            matches!(
                f.fetch("https://idp.example/jwks").await,
                Err(FetchError::Unavailable(_))
            ),
            "{}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let good = HttpsIssuerKeys::new(&EgressConfig {
        private_hosts: None,
        extra_ca_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ca.pem").into()),
    });
    assert_eq!(good.problem(), None, "a readable PEM bundle adds its roots");
}
