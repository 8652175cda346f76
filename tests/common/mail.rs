//! Real mail servers for the email tests: Dovecot and Postfix started by
//! `scripts/mailservers.sh` on free loopback ports in a temp folder, and
//! stopped when dropped. Mail is sent to Postfix over SMTP (a few lines of
//! plain SMTP, so the bytes are exactly the test's) and read back from
//! Dovecot over IMAP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_imap::Session;
use futures::TryStreamExt;
use tokio::net::TcpStream as AsyncTcp;

pub const PASSWORD: &str = "secret";
pub const SUPPORT: &str = "support@example.test";
pub const CUSTOMER: &str = "ada@customer.test";

/// Dovecot + Postfix for one test.
pub struct MailServers {
    pub dir: tempfile::TempDir,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub lmtp_port: u16,
    pub smtp_port: u16,
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl MailServers {
    /// Starts both servers with mailboxes for `users` (plus the two
    /// standard ones). Panics with what to do when this machine cannot.
    pub fn start(extra_users: &[&str]) -> MailServers {
        let missing: Vec<&str> = ["/usr/sbin/dovecot", "/usr/sbin/postfix"]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        assert!(
            missing.is_empty(),
            "the email tests need Dovecot and Postfix ({} missing): run scripts/test.sh as root, \
             or apt-get install dovecot-imapd dovecot-lmtpd postfix",
            missing.join(", ")
        );
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the email tests start Postfix, which needs root: run them as root (CI does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(4);
        let mut users = vec![SUPPORT.to_owned(), CUSTOMER.to_owned()];
        users.extend(extra_users.iter().map(|u| u.to_string()));
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/mailservers.sh"))
            .arg("start")
            .arg(dir.path())
            .args(ports.iter().map(|p| p.to_string()))
            .args(&users)
            .output()
            .expect("run scripts/mailservers.sh");
        let servers = MailServers {
            dir,
            imap_port: ports[0],
            imaps_port: ports[1],
            lmtp_port: ports[2],
            smtp_port: ports[3],
        };
        assert!(
            out.status.success(),
            "mail servers did not start:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        servers
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// Postfix's log, for failure messages.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix/maillog")).unwrap_or_default()
    }

    /// Sends `raw` over SMTP to Postfix, which delivers it to Dovecot.
    /// `from` is the envelope sender (`""` for a bounce).
    pub fn send(&self, from: &str, to: &[&str], raw: &[u8]) {
        smtp_send(self.smtp_port, from, to, raw).unwrap_or_else(|e| {
            panic!("SMTP send failed: {e}\n{}", self.maillog());
        });
    }

    /// An IMAP session as `user` (plain IMAP on loopback).
    pub async fn imap(&self, user: &str) -> Session<AsyncTcp> {
        let tcp = AsyncTcp::connect(("127.0.0.1", self.imap_port))
            .await
            .expect("connect to Dovecot");
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap().expect("greeting");
        client
            .login(user, PASSWORD)
            .await
            .map_err(|(e, _)| e)
            .expect("IMAP login")
    }

    /// Every message in `mailbox` of `user`, raw, in UID order.
    pub async fn fetch_all(&self, user: &str, mailbox: &str) -> Vec<(u32, Vec<u8>, Vec<String>)> {
        let mut s = self.imap(user).await;
        let mb = s.examine(mailbox).await.expect("EXAMINE");
        if mb.exists == 0 {
            let _ = s.logout().await;
            return Vec::new();
        }
        let fetched: Vec<_> = s
            .uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")
            .await
            .expect("UID FETCH")
            .try_collect()
            .await
            .expect("fetch stream");
        let mut out: Vec<(u32, Vec<u8>, Vec<String>)> = fetched
            .iter()
            .map(|f| {
                (
                    f.uid.unwrap_or_default(),
                    f.body().unwrap_or_default().to_vec(),
                    f.flags().map(|fl| format!("{fl:?}")).collect(),
                )
            })
            .collect();
        out.sort_by_key(|m| m.0);
        let _ = s.logout().await;
        out
    }

    /// Appends `raw` to `mailbox` of `user` (creating the mailbox if asked).
    pub async fn append(&self, user: &str, mailbox: &str, raw: &[u8]) {
        let mut s = self.imap(user).await;
        s.append(mailbox, None, None, raw).await.expect("APPEND");
        let _ = s.logout().await;
    }

    pub async fn create(&self, user: &str, mailbox: &str) {
        let mut s = self.imap(user).await;
        s.create(mailbox).await.expect("CREATE");
        let _ = s.logout().await;
    }

    pub async fn delete(&self, user: &str, mailbox: &str) {
        let mut s = self.imap(user).await;
        s.delete(mailbox).await.expect("DELETE");
        let _ = s.logout().await;
    }
}

impl Drop for MailServers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/mailservers.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn expect_code(reader: &mut BufReader<TcpStream>, code: &str) -> Result<(), String> {
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        if !line.starts_with(code) {
            return Err(format!("expected {code}, got {line:?}"));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Plain SMTP with dot-stuffing; exact bytes, no rewriting.
pub fn smtp_send(port: u16, from: &str, to: &[&str], raw: &[u8]) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    expect_code(&mut reader, "220")?;
    let mut cmd = |line: String, code: &str, r: &mut BufReader<TcpStream>| {
        writer
            .write_all(line.as_bytes())
            .map_err(|e| e.to_string())?;
        expect_code(r, code)
    };
    cmd("EHLO test.local\r\n".into(), "250", &mut reader)?;
    cmd(format!("MAIL FROM:<{from}>\r\n"), "250", &mut reader)?;
    for rcpt in to {
        cmd(format!("RCPT TO:<{rcpt}>\r\n"), "250", &mut reader)?;
    }
    cmd("DATA\r\n".into(), "354", &mut reader)?;
    let mut data = Vec::with_capacity(raw.len() + 64);
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    let mut w = reader.get_ref().try_clone().unwrap();
    w.write_all(&data).map_err(|e| e.to_string())?;
    expect_code(&mut reader, "250")?;
    w.write_all(b"QUIT\r\n").map_err(|e| e.to_string())?;
    Ok(())
}

/// Value of header `name` in raw mail (unfolded), if present.
pub fn header(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut value: Option<String> = None;
    let prefix = format!("{}:", name.to_ascii_lowercase());
    for line in head.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if line.to_ascii_lowercase().starts_with(&prefix) {
            value = Some(line[prefix.len()..].trim().to_owned());
        }
    }
    value
}
