//! Daemon settings: the TOML file, then `SWITCHBOARD__SECTION__KEY`
//! environment overrides, then validation into [`Settings`].
//!
//! Loading is all-or-nothing: a file with any problem yields a
//! [`ConfigError`] listing every problem with its file and key, so
//! `switchboard check` and a reload both report the whole picture and the
//! daemon keeps its old settings.
//!
//! Relative paths inside the file (`templates.path`, `*_file` secrets) are
//! taken from the directory of the config file, so a config folder can be
//! moved as a whole. `store.url` is a URL and follows sqlx: a relative
//! SQLite path is taken from the working directory.

pub mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::channels::smtp::{SmtpConfig, SmtpSender};
use crate::channels::{Channels, generic, imap};
use crate::templates::AckTemplates;
use secret::{Secret, SecretSource};

/// Default location of the main config file.
pub const DEFAULT_PATH: &str = "config/switchboard.toml";
/// Prefix of environment overrides: `SWITCHBOARD__SERVER__LISTEN`.
pub const ENV_PREFIX: &str = "SWITCHBOARD";

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted key, e.g. `channels.generic.shop.secret`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

/// The configuration could not be loaded; every problem found is listed.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds, e.g. `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight requests and deliveries.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.sqlite` (created if missing).
    pub url: String,
    /// Most intakes one group commit may carry.
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://data/switchboard.sqlite".into(),
            max_batch: 256,
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token for `/api/v1/…`. Without one the API answers 401.
    pub ops_token: Option<String>,
    pub ops_token_env: Option<String>,
    pub ops_token_file: Option<String>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest webhook body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// `[templates]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    /// Folder of `<name>.<language>.txt` templates.
    pub path: PathBuf,
    /// Language used when the customer's has no template.
    pub default_language: String,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        TemplatesConfig {
            path: "templates".into(),
            default_language: "en".into(),
        }
    }
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Attempts before an entry is marked failed.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Ceiling of the retry delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Timeout of one delivery request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often the dispatcher looks for due entries when not woken.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// `[channels.<adapter>.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    #[serde(default)]
    pub generic: BTreeMap<String, generic::Config>,
    #[serde(default)]
    pub imap: BTreeMap<String, imap::Config>,
}

/// The file as written, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub templates: TemplatesConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub channels: ChannelsConfig,
    /// Outgoing mail (email acknowledgements, notifications).
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// Validated settings, with secrets resolved, channels built and templates
/// compiled: everything the daemon needs, or nothing.
#[derive(Debug)]
pub struct Settings {
    /// The config file these came from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub ops_token: Option<Secret>,
    pub limits: Limits,
    pub outbox: OutboxConfig,
    pub templates: AckTemplates,
    pub channels: Channels,
    /// The shared SMTP sender, when `[smtp]` is configured.
    pub smtp: Option<Arc<SmtpSender>>,
    /// IMAP channels by name, for the daemon's mailbox tasks.
    pub imap: BTreeMap<String, Arc<imap::ImapChannel>>,
}

impl Settings {
    /// Reads `path`, applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let raw = read_raw(path)?;
        Self::validate(path, raw)
    }

    fn validate(path: &Path, raw: RawSettings) -> Result<Settings, ConfigError> {
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                file: path.to_path_buf(),
                key: key.to_owned(),
                message,
            })
        };

        if !raw.store.url.starts_with("sqlite:") {
            problem(
                "store.url",
                "expected a `sqlite://…` URL (PostgreSQL is not supported yet)".into(),
            );
        }
        if raw.store.max_batch == 0 {
            problem("store.max_batch", "must be at least 1".into());
        }
        if raw.limits.max_body_bytes < 256 {
            problem("limits.max_body_bytes", "must be at least 256".into());
        }
        if raw.outbox.max_attempts == 0 {
            problem("outbox.max_attempts", "must be at least 1".into());
        }
        if raw.outbox.concurrency == 0 {
            problem("outbox.concurrency", "must be at least 1".into());
        }
        if raw.outbox.initial_backoff > raw.outbox.max_backoff {
            problem(
                "outbox.initial_backoff",
                "must not exceed outbox.max_backoff".into(),
            );
        }
        let ops_token = SecretSource::new(
            "ops_token",
            &raw.api.ops_token,
            &raw.api.ops_token_env,
            &raw.api.ops_token_file,
        )
        .resolve(&base)
        .unwrap_or_else(|e| {
            problem("api.ops_token", e);
            None
        });

        let mut channels = Channels::default();
        for (name, cfg) in &raw.channels.generic {
            if let Err(msg) = check_channel_name(name) {
                problem(&format!("channels.generic.{name}"), msg);
                continue;
            }
            match generic::GenericChannel::from_config(name, cfg, &base) {
                Ok(c) => channels.insert(Arc::new(c)),
                Err(list) => {
                    for (key, msg) in list {
                        problem(&format!("channels.generic.{name}.{key}"), msg);
                    }
                }
            }
        }

        let smtp = match &raw.smtp {
            None => None,
            Some(cfg) => match SmtpSender::from_config(cfg, &base) {
                Ok(s) => Some(Arc::new(s)),
                Err(list) => {
                    for (key, msg) in list {
                        problem(&format!("smtp.{key}"), msg);
                    }
                    None
                }
            },
        };
        let mut imap_channels = BTreeMap::new();
        for (name, cfg) in &raw.channels.imap {
            if let Err(msg) = check_channel_name(name) {
                problem(&format!("channels.imap.{name}"), msg);
                continue;
            }
            match imap::ImapChannel::from_config(name, cfg, smtp.clone(), &base) {
                Ok(c) => {
                    let c = Arc::new(c);
                    channels.insert(c.clone());
                    imap_channels.insert(name.clone(), c);
                }
                Err(list) => {
                    for (key, msg) in list {
                        problem(&format!("channels.imap.{name}.{key}"), msg);
                    }
                }
            }
        }

        let template_dir = base.join(&raw.templates.path);
        let templates = match AckTemplates::load(&template_dir, &raw.templates.default_language) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(Problem {
                    file: e.file.unwrap_or_else(|| path.to_path_buf()),
                    key: if e.in_template {
                        String::new()
                    } else {
                        "templates.path".into()
                    },
                    message: e.message,
                });
                None
            }
        };

        match templates {
            Some(templates) if problems.is_empty() => Ok(Settings {
                path: path.to_path_buf(),
                server: raw.server,
                store: raw.store,
                ops_token,
                limits: raw.limits,
                outbox: raw.outbox,
                templates,
                channels,
                smtp,
                imap: imap_channels,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

/// Channel names appear in URLs and metric labels: keep them simple. They
/// are lower case because environment overrides are lower-cased.
fn check_channel_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("channel names use only a-z, 0-9, `-` and `_` (at most 64)".into())
    }
}

fn read_raw(path: &Path) -> Result<RawSettings, ConfigError> {
    let fail = |message: String| ConfigError {
        problems: vec![Problem {
            file: path.to_path_buf(),
            key: String::new(),
            message,
        }],
    };
    if !path.is_file() {
        return Err(fail("config file not found".into()));
    }
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| fail(describe_config_error(e)))?;
    built
        .try_deserialize::<RawSettings>()
        .map_err(|e| fail(describe_config_error(e)))
}

/// The `config` crate already says which key; drop the duplicate origin it
/// appends, since the problem is printed with the file anyway.
fn describe_config_error(e: config::ConfigError) -> String {
    let text = e.to_string();
    match text.rsplit_once(" in ") {
        Some((head, tail)) if tail.ends_with(".toml") => head.to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, body: &str) -> PathBuf {
        let templates = dir.join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::write(templates.join("ack.en.txt"), "Thanks, ref {{ reference }}").unwrap();
        let path = dir.join("switchboard.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "");
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.server.listen.port(), 8080);
        assert_eq!(s.limits.max_body_bytes, 1024 * 1024);
        assert!(s.ops_token.is_none());
        assert!(s.channels.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
        );
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("listen_port"), "{err}");
        assert!(err.contains("switchboard.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_reported_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            r#"
            [store]
            url = "mysql://x"
            [channels.generic.shop]
            reply_url = "nope"
            [channels.generic.Bad]
            secret = "x"
            "#,
        );
        let err = Settings::load(&path).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"store.url"), "{keys:?}");
        assert!(keys.contains(&"channels.generic.shop.secret"), "{keys:?}");
        assert!(
            keys.contains(&"channels.generic.shop.reply_url"),
            "{keys:?}"
        );
        assert!(keys.contains(&"channels.generic.Bad"), "{keys:?}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Settings::load(Path::new("/nonexistent/switchboard.toml")).unwrap_err();
        assert!(err.to_string().contains("config file not found"), "{err}");
    }

    #[test]
    fn secret_files_are_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "tok\n").unwrap();
        let path = write_config(dir.path(), "[api]\nops_token_file = \"token\"\n");
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.ops_token.unwrap().expose(), "tok");
    }
}
