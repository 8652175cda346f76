//! Process lifecycle: `check`, environment overrides, reload on SIGHUP,
//! graceful stop on SIGTERM, and restarts that keep every inquiry.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(["check", "--config"]).arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_reports_file_key_and_problem() {
    let setup = Setup::new(None);
    let (ok, text) = check(&setup.config_path(), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("ok (1 channel(s))"), "{text}");

    setup.write_config(
        &setup.config_text(None, "[channels.generic.desk]\nreply_url = \"ftp://x\"\n"),
    );
    let (ok, text) = check(&setup.config_path(), &[]);
    assert!(!ok);
    assert!(text.contains("switchboard.toml"), "{text}");
    assert!(text.contains("`channels.generic.desk.secret`"), "{text}");
    assert!(
        text.contains("`channels.generic.desk.reply_url`: expected an http(s) URL"),
        "{text}"
    );

    setup.write_config(&setup.config_text(None, "[server2]\nx = 1\n"));
    let (ok, text) = check(&setup.config_path(), &[]);
    assert!(!ok);
    assert!(text.contains("unknown field `server2`"), "{text}");

    let (ok, text) = check(std::path::Path::new("/nonexistent/switchboard.toml"), &[]);
    assert!(!ok);
    assert!(text.contains("config file not found"), "{text}");
}

#[test]
fn environment_overrides_and_secret_sources() {
    let setup = Setup::new(None);
    let (ok, text) = check(
        &setup.config_path(),
        &[("SWITCHBOARD__LIMITS__MAX_BODY_BYTES", "12")],
    );
    assert!(!ok);
    assert!(text.contains("limits.max_body_bytes"), "{text}");

    // A secret given by environment variable name, checked at load.
    setup.write_config(&setup.config_text(
        None,
        "[channels.generic.desk]\nsecret_env = \"DESK_SECRET\"\n",
    ));
    let (ok, text) = check(&setup.config_path(), &[]);
    assert!(!ok);
    assert!(text.contains("DESK_SECRET"), "{text}");
    let (ok, text) = check(&setup.config_path(), &[("DESK_SECRET", "s")]);
    assert!(ok, "{text}");
}

#[tokio::test]
async fn environment_overrides_reach_the_running_daemon() {
    let setup = Setup::new(None);
    let daemon = Daemon::start(
        &setup.config_path(),
        &[("SWITCHBOARD__CHANNELS__GENERIC__SHOP__SECRET", "rotated")],
    );
    let client = http();
    // Signed with the file's secret: refused, the environment won.
    let (s, _) = post_webhook(&client, &daemon, "shop", &json!({"id": "e1", "text": "x"})).await;
    assert_eq!(s, 401);
    let raw = br#"{"id":"e1","text":"x"}"#;
    let sig = format!(
        "sha256={}",
        switchboard::channels::signature::hmac_sha256_hex(b"rotated", raw)
    );
    let r = client
        .post(daemon.url("/webhooks/generic/shop"))
        .header("x-switchboard-signature", sig)
        .body(raw.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // Secrets never reach the log.
    assert!(!daemon.log_text().contains("rotated"));
    assert!(!daemon.log_text().contains(SECRET));
}

#[tokio::test]
async fn reload_applies_a_valid_file_and_keeps_the_old_one_when_broken() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();

    // Broken file: rejected, the old channels keep working.
    std::fs::write(setup.config_path(), "[server\nlisten = ").unwrap();
    daemon.signal("HUP");
    eventually(Duration::from_secs(5), "reload rejection", || async {
        daemon.log_contains("configuration rejected").then_some(())
    })
    .await;
    let (s, _) = post_webhook(&client, &daemon, "shop", &json!({"id": "k1", "text": "x"})).await;
    assert_eq!(s, 202);

    // Invalid (not unparsable) file: also rejected.
    setup.write_config(&setup.config_text(None, "[channels.generic.desk]\n"));
    daemon.signal("HUP");
    eventually(Duration::from_secs(5), "second rejection", || async {
        (daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("configuration rejected"))
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let (s, _) = post_webhook(&client, &daemon, "desk", &json!({"id": "k2", "text": "x"})).await;
    assert_eq!(s, 404);

    // Valid file adding a channel: takes effect without a restart.
    setup.write_config(&setup.config_text(
        None,
        &format!("[channels.generic.desk]\nsecret = \"{SECRET}\"\n"),
    ));
    daemon.signal("HUP");
    eventually(Duration::from_secs(5), "reload", || async {
        daemon.log_contains("configuration reloaded").then_some(())
    })
    .await;
    let (s, _) = post_webhook(&client, &daemon, "desk", &json!({"id": "k3", "text": "x"})).await;
    assert_eq!(s, 202);
    let (s, _) = post_webhook(&client, &daemon, "shop", &json!({"id": "k4", "text": "x"})).await;
    assert_eq!(s, 202);
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_keeps_every_inquiry() {
    let setup = Setup::new(None);
    let mut daemon = setup.start();
    let client = http();
    let mut refs = Vec::new();
    for i in 0..20 {
        let (s, a) = post_webhook(
            &client,
            &daemon,
            "shop",
            &json!({"id": format!("s{i}"), "text": "x", "thread": format!("th{i}")}),
        )
        .await;
        assert_eq!(s, 202);
        refs.push(a["inquiry"].clone());
    }
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.log_contains("switchboard stopped"));

    let daemon = setup.start();
    let (_, list) = api_get(&client, &daemon, "/api/v1/inquiries?limit=100").await;
    assert_eq!(list["inquiries"].as_array().unwrap().len(), 20);
    // Idempotency and threads survive the restart too.
    let (s, a) = post_webhook(&client, &daemon, "shop", &json!({"id": "s3", "text": "x"})).await;
    assert_eq!((s, &a["inquiry"]), (200, &refs[3]));
    let (s, a) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "s3-reply", "text": "y", "thread": "th3"}),
    )
    .await;
    assert_eq!((s, &a["inquiry"]), (202, &refs[3]));
    // New inquiries after a restart get fresh references.
    let (s, a) = post_webhook(&client, &daemon, "shop", &json!({"id": "new", "text": "z"})).await;
    assert_eq!(s, 202);
    assert!(!refs.contains(&a["inquiry"]));
}

#[test]
fn start_fails_clearly_on_a_bad_config_or_busy_port() {
    let setup = Setup::new(None);
    setup.write_config(
        &setup
            .config_text(None, "")
            .replace("max_body_bytes = 4096", "max_body_bytes = \"lots\""),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["run", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_body_bytes"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let text = setup
        .config_text(None, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    setup.write_config(&text);
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["run", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}
