//! TLS to PostgreSQL, against a real server: `scripts/postgres.sh` offers
//! TLS with the test certificate in `tests/fixtures/pg-tls` (issued for
//! 127.0.0.1 by its `ca.crt`). With `sslmode=verify-full` both of the
//! store's connections, the read pool and the writer, are encrypted; a
//! server certificate signed by a CA the daemon was not told to trust stops
//! the start with the reason.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::{PgServer, create_database, psql};
use common::*;
use serde_json::json;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pg-tls")
        .join(name)
        .display()
        .to_string()
}

/// A config on a fresh database of `pg`, reached with the given query.
fn setup_on(pg: &PgServer, reply_url: Option<&str>, query: &str) -> (Setup, String) {
    let db = create_database(&pg.admin_url);
    let name = db.rsplit('/').next().unwrap().to_owned();
    let mut setup = Setup::new(reply_url);
    setup.store_url = format!("{db}?{query}");
    setup.cluster = "[cluster]\ninstance = \"tls-test\"\n".into();
    setup.write_config(&setup.config_text(reply_url, ""));
    (setup, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_encrypts_the_read_pool_and_the_writer() {
    let pg = PgServer::start();
    let replies = ReplyServer::start(&[]).await;
    let query = format!("sslmode=verify-full&sslrootcert={}", fixture("ca.crt"));
    let (setup, database) = setup_on(&pg, Some(&replies.url), &query);
    let daemon = setup.start();

    let client = http();
    let message = json!({"id": "tls-1", "from": {"name": "Ada"}, "text": "Hello over TLS"});
    let (status, body) = post_webhook(&client, &daemon, "shop", &message).await;
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(10), "the acknowledgement", || async {
        (replies.received().len() == 1).then_some(())
    })
    .await;
    let reference = body["inquiry"].as_str().unwrap();
    let detail = api_get(&client, &daemon, &format!("/api/v1/inquiries/{reference}")).await;
    assert_eq!(detail.0, 200, "read through the pool: {}", detail.1);

    // Every connection the daemon holds to its database, as the server sees it.
    let connections = psql(
        &pg.admin_url,
        &format!(
            "SELECT coalesce(nullif(a.application_name, ''), 'pool') || ' ' || s.ssl || ' ' || coalesce(s.version, '-') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = '{database}' ORDER BY 1"
        ),
    );
    let lines: Vec<&str> = connections.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("switchboard-writer true TLSv1.")),
        "the writer's connection is encrypted: {connections}"
    );
    assert!(
        lines.len() >= 2,
        "the read pool is connected too: {connections}"
    );
    assert!(
        lines.iter().all(|l| l.contains(" true TLSv1.")),
        "no connection is plain text: {connections}"
    );
}

#[test]
fn a_server_certificate_from_an_untrusted_ca_stops_the_start() {
    let pg = PgServer::start();
    let query = format!(
        "sslmode=verify-full&sslrootcert={}",
        fixture("other-ca.crt")
    );
    let (setup, _) = setup_on(&pg, None, &query);

    // The settings are valid; only connecting can tell the CA is wrong.
    let check = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["run", "--config"])
        .arg(setup.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchboard kept running with an untrusted server certificate");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("certificate"), "the reason is given: {err}");
    assert!(
        err.contains("UnknownIssuer"),
        "and which check failed: {err}"
    );
}
