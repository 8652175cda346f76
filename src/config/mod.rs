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
use crate::channels::{ChannelAdapter, Channels, generic, imap, slack, telegram, twilio, whatsapp};
use crate::routing::{Roster, RoutingConfig};
use crate::rules::{Catalog, RuleSet};
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
    /// How often the config file, the rules, the roster and the templates
    /// folder are checked for changes, which reload them as SIGHUP does;
    /// `0s` turns the check off.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            drain_timeout: Duration::from_secs(10),
            watch_interval: Duration::from_secs(2),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.sqlite` (created if missing), or
    /// `postgres://user:password@host:port/database` to share one database
    /// between several instances. The URL may hold a password: it is never
    /// logged; `SWITCHBOARD__STORE__URL` keeps it out of the file.
    pub url: String,
    /// Most intakes one group commit may carry.
    pub max_batch: usize,
    /// SQLite page cache of the writer's connection, in KiB.
    pub cache_kib: u32,
    /// SQLite page cache of each read connection (up to four), in KiB.
    pub read_cache_kib: u32,
    /// Connections of the read pool (API views, metrics, router snapshot).
    pub pool_size: u32,
    /// PostgreSQL: longest a statement may run before the server cancels it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// PostgreSQL: longest a connection attempt may take. While the
    /// database is unreachable, intake answers 503 and `/readyz` fails.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL: how long an outbox entry claimed by one instance is left
    /// to it. If that instance dies mid-delivery, another delivers the
    /// entry after this.
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    /// PostgreSQL: longest wait between reconnect attempts of the writer
    /// after the database went away (attempts start at 50 ms and double).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://data/switchboard.sqlite".into(),
            max_batch: 256,
            cache_kib: 8192,
            read_cache_kib: 1024,
            pool_size: 4,
            statement_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            claim_lease: Duration::from_secs(60),
            reconnect_max_backoff: Duration::from_secs(2),
        }
    }
}

impl StoreConfig {
    /// Whether this store is shared by several instances (PostgreSQL).
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) if self.is_postgres() => match rest.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}")
                }
                None => self.url.clone(),
            },
            _ => self.url.clone(),
        }
    }
}

/// `[cluster]`: only read with a PostgreSQL store, where several instances
/// share the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This instance's name in leases and outbox claims; unique among
    /// running instances. Default: `<hostname>-<pid>`.
    pub instance: Option<String>,
    /// The URL other instances use to forward routing requests (accept,
    /// presence, queue, …) to this one when it leads. Default:
    /// `http://<server.listen>` (set it when listening on 0.0.0.0).
    pub advertise_url: Option<String>,
    /// How long the routing leader's and each mailbox's lease lasts without
    /// renewal (renewed every third of it). A dead instance's work is taken
    /// over within about this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the routing leader takes inquiries that other instances
    /// took in.
    #[serde(with = "humantime_serde")]
    pub inbox_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            instance: None,
            advertise_url: None,
            lease_ttl: Duration::from_secs(15),
            inbox_interval: Duration::from_millis(200),
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

/// `[threading]`: what a reply to a resolved inquiry does.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadingConfig {
    /// A message that threads (by Message-ID or `thread` key, by a quoted
    /// `[INQ-…]` reference or a `+INQ-…` address) onto an inquiry resolved
    /// at most this long ago reopens it; one resolved longer ago gets a new
    /// inquiry linked to it. `0s` never reopens.
    #[serde(with = "humantime_serde")]
    pub reopen_window: Duration,
}

impl Default for ThreadingConfig {
    fn default() -> Self {
        ThreadingConfig {
            reopen_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[roster]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterConfig {
    /// The roster file, relative to this config's folder. Without it,
    /// `roster.toml` beside the config is used if present, else nobody is
    /// on the roster and every inquiry waits in the queue.
    pub path: Option<PathBuf>,
}

/// `[rules]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// The routing rules file, relative to the config file's folder.
    /// Default `rules.toml`; when not set and that file does not exist,
    /// no rules apply.
    pub path: Option<PathBuf>,
}

/// Default rules file name, next to the config file.
pub const DEFAULT_RULES: &str = "rules.toml";

/// `[channels.<adapter>.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    #[serde(default)]
    pub generic: BTreeMap<String, generic::Config>,
    #[serde(default)]
    pub twilio: BTreeMap<String, twilio::Config>,
    #[serde(default)]
    pub slack: BTreeMap<String, slack::Config>,
    #[serde(default)]
    pub whatsapp: BTreeMap<String, whatsapp::Config>,
    #[serde(default)]
    pub telegram: BTreeMap<String, telegram::Config>,
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
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub templates: TemplatesConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub channels: ChannelsConfig,
    #[serde(default)]
    pub roster: RosterConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub threading: ThreadingConfig,
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
    pub cluster: ClusterConfig,
    pub ops_token: Option<Secret>,
    pub limits: Limits,
    pub outbox: OutboxConfig,
    pub templates: AckTemplates,
    pub channels: Channels,
    pub roster: Arc<Roster>,
    pub routing: RoutingConfig,
    pub threading: ThreadingConfig,
    /// The compiled routing rules (`rules.path`).
    pub rules: Arc<RuleSet>,
    /// What these were read from, for reload on change: the config file,
    /// the rules file, the roster file (also when an optional one does not
    /// exist yet) and the templates folder.
    pub sources: Vec<PathBuf>,
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
        // Templates before channels: the Twilio voice greeting renders from them.
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

        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                file: path.to_path_buf(),
                key: key.to_owned(),
                message,
            })
        };

        if raw.store.is_postgres() {
            // Parsed here so a typo is caught by `check`, never echoed: the
            // URL may carry a password.
            match crate::store::pg_tls::PgTls::from_url(&raw.store.url) {
                Err(e) => problem("store.url", e.to_string()),
                Ok((writer_url, tls)) => {
                    if writer_url.parse::<postgres::Config>().is_err() {
                        problem(
                            "store.url",
                            "not a valid postgres:// URL (expected postgres://user:password@host:port/database)"
                                .into(),
                        );
                    }
                    if let Err(e) = tls.root_certificates() {
                        problem("store.url", e.to_string());
                    }
                }
            }
        } else if !raw.store.url.starts_with("sqlite:") {
            problem(
                "store.url",
                "expected a `sqlite://…` or `postgres://…` URL".into(),
            );
        }
        if raw.store.pool_size == 0 {
            problem("store.pool_size", "must be at least 1".into());
        }
        if raw.cluster.lease_ttl < Duration::from_secs(3) {
            problem(
                "cluster.lease_ttl",
                "must be at least 3s (it is renewed every third of it)".into(),
            );
        }
        if raw.cluster.inbox_interval.is_zero() {
            problem("cluster.inbox_interval", "must be more than 0".into());
        }
        if raw.store.max_batch == 0 {
            problem("store.max_batch", "must be at least 1".into());
        }
        for (key, kib) in [
            ("store.cache_kib", raw.store.cache_kib),
            ("store.read_cache_kib", raw.store.read_cache_kib),
        ] {
            if kib < 64 {
                problem(key, "must be at least 64 (KiB)".into());
            }
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
        let c = &raw.channels;
        build_channels(
            "generic",
            &c.generic,
            &mut channels,
            &mut problem,
            |name, cfg| generic::GenericChannel::from_config(name, cfg, &base).map(arc),
        );
        build_channels(
            "twilio",
            &c.twilio,
            &mut channels,
            &mut problem,
            |name, cfg| {
                twilio::TwilioChannel::from_config(name, cfg, &base, templates.as_ref()).map(arc)
            },
        );
        build_channels(
            "slack",
            &c.slack,
            &mut channels,
            &mut problem,
            |name, cfg| slack::SlackChannel::from_config(name, cfg, &base).map(arc),
        );
        build_channels(
            "whatsapp",
            &c.whatsapp,
            &mut channels,
            &mut problem,
            |name, cfg| whatsapp::WhatsappChannel::from_config(name, cfg, &base).map(arc),
        );
        build_channels(
            "telegram",
            &c.telegram,
            &mut channels,
            &mut problem,
            |name, cfg| telegram::TelegramChannel::from_config(name, cfg, &base).map(arc),
        );

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

        let roster = load_roster(&base, &raw.roster, &mut problems);
        let rules_path = base.join(
            raw.rules
                .path
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_RULES)),
        );
        let sources = vec![
            path.to_path_buf(),
            rules_path.clone(),
            roster_file(&base, &raw.roster).0,
            base.join(&raw.templates.path),
        ];
        if raw.routing.explain_limit == 0 {
            problems.push(Problem {
                file: path.to_path_buf(),
                key: "routing.explain_limit".into(),
                message: "must be at least 1".into(),
            });
        }

        // Rules refer to templates, so they are checked once those loaded.
        let rules = templates.as_ref().and_then(|templates| {
            // Skills and teams are checked against the roster when there
            // is one; with an empty roster any name is accepted.
            let staffed = !roster.associates.is_empty();
            let catalog = Catalog {
                skills: staffed.then(|| roster.skills()),
                templates: templates.names(),
                teams: staffed.then(|| roster.teams()),
            };
            if !rules_path.exists() {
                if raw.rules.path.is_none() {
                    return Some(RuleSet::empty());
                }
                problems.push(Problem {
                    file: path.to_path_buf(),
                    key: "rules.path".into(),
                    message: format!("rules file {} not found", rules_path.display()),
                });
                return None;
            }
            match RuleSet::load(&rules_path, &catalog) {
                Ok(rules) => Some(rules),
                Err(list) => {
                    problems.extend(list.into_iter().map(|p| Problem {
                        key: String::new(),
                        message: p.describe(),
                        file: p.file,
                    }));
                    None
                }
            }
        });

        match (templates, rules) {
            (Some(templates), Some(rules)) if problems.is_empty() => Ok(Settings {
                path: path.to_path_buf(),
                server: raw.server,
                store: raw.store,
                cluster: raw.cluster,
                ops_token,
                limits: raw.limits,
                outbox: raw.outbox,
                templates,
                channels,
                roster: Arc::new(roster),
                routing: raw.routing,
                threading: raw.threading,
                rules: Arc::new(rules),
                sources,
                smtp,
                imap: imap_channels,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

/// Loads the roster named by `[roster]`, adding its problems (with the
/// roster file's name) to `problems`.
fn load_roster(base: &Path, config: &RosterConfig, problems: &mut Vec<Problem>) -> Roster {
    let (file, required) = roster_file(base, config);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Roster::default();
        }
        Err(e) => {
            problems.push(Problem {
                file,
                key: String::new(),
                message: format!("cannot read the roster: {e}"),
            });
            return Roster::default();
        }
    };
    let folder = file.parent().unwrap_or(base).to_path_buf();
    match Roster::from_str(&text, &folder, &crate::routing::roster::parse_hours) {
        Ok(r) => r,
        Err(list) => {
            problems.extend(list.into_iter().map(|p| Problem {
                file: file.clone(),
                key: p.key,
                message: p.message,
            }));
            Roster::default()
        }
    }
}

fn arc<C: ChannelAdapter + 'static>(channel: C) -> Arc<dyn ChannelAdapter> {
    Arc::new(channel)
}

/// Validates and builds every instance of one adapter kind, reporting
/// problems under `channels.<kind>.<name>.<key>`.
fn build_channels<C>(
    kind: &str,
    table: &BTreeMap<String, C>,
    channels: &mut Channels,
    problem: &mut impl FnMut(&str, String),
    build: impl Fn(&str, &C) -> Result<Arc<dyn ChannelAdapter>, Vec<(String, String)>>,
) {
    for (name, cfg) in table {
        if let Err(msg) = check_channel_name(name) {
            problem(&format!("channels.{kind}.{name}"), msg);
            continue;
        }
        match build(name, cfg) {
            Ok(c) => channels.insert(c),
            Err(list) => {
                for (key, msg) in list {
                    problem(&format!("channels.{kind}.{name}.{key}"), msg);
                }
            }
        }
    }
}

/// The roster file, and whether it must exist.
fn roster_file(base: &Path, config: &RosterConfig) -> (PathBuf, bool) {
    match &config.path {
        Some(p) => (base.join(p), true),
        None => (base.join("roster.toml"), false),
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
        assert_eq!(
            s.threading.reopen_window,
            Duration::from_secs(7 * 24 * 3600)
        );
    }

    #[test]
    fn the_reopen_window_is_a_duration_and_zero_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "[threading]\nreopen_window = \"36h\"\n");
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.threading.reopen_window, Duration::from_secs(36 * 3600));
        let path = write_config(dir.path(), "[threading]\nreopen_window = \"0s\"\n");
        assert!(
            Settings::load(&path)
                .unwrap()
                .threading
                .reopen_window
                .is_zero()
        );
        let path = write_config(dir.path(), "[threading]\nreopen_window = \"soon\"\n");
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("reopen_window"), "{err}");
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
    fn postgres_tls_settings_are_checked_without_echoing_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pg-tls/ca.crt");
        let load = |query: &str| {
            let path = write_config(
                dir.path(),
                &format!("[store]\nurl = \"postgres://sb:s3cret@db.example:5432/sb?{query}\"\n"),
            );
            Settings::load(&path)
        };
        for query in [
            "sslmode=disable".to_owned(),
            "sslmode=prefer".to_owned(),
            "sslmode=require".to_owned(),
            format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
            format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            "sslmode=verify-full".to_owned(),
        ] {
            assert!(load(&query).is_ok(), "{query}");
        }
        for (query, reason) in [
            ("sslmode=on", "sslmode=on is not one of"),
            (
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                "sslmode=require&sslrootcert=/etc/ca.pem",
                "no effect with sslmode=require",
            ),
            (
                "sslmode=verify-full&sslcert=/etc/client.pem",
                "sslcert (a client certificate)",
            ),
        ] {
            let err = load(query).unwrap_err();
            assert_eq!(err.problems[0].key, "store.url", "{query}");
            let text = err.to_string();
            assert!(text.contains(reason), "{query}: {text}");
            assert!(
                !text.contains("s3cret"),
                "the password is never echoed: {text}"
            );
        }
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
    fn rules_load_from_the_config_folder_or_default_to_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "");
        assert!(Settings::load(&path).unwrap().rules.is_empty());

        std::fs::write(
            dir.path().join("rules.toml"),
            "[[rule]]\nname = \"vip\"\nwhen.customer_tags = \"vip\"\nurgency = \"high\"\n",
        )
        .unwrap();
        assert_eq!(Settings::load(&path).unwrap().rules.len(), 1);

        let path = write_config(dir.path(), "[rules]\npath = \"other.toml\"\n");
        let err = Settings::load(&path).unwrap_err();
        assert_eq!(err.problems[0].key, "rules.path");
        assert!(err.to_string().contains("other.toml not found"), "{err}");
    }

    #[test]
    fn rule_problems_name_the_rules_file_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "");
        std::fs::write(
            dir.path().join("rules.toml"),
            "[[rule]]\nname = \"x\"\nack = \"nope\"\n[[rule]]\nname = \"y\"\nack = \"ack\"\n",
        )
        .unwrap();
        let err = Settings::load(&path).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("rules.toml: rule `x`: `ack`: unknown template `nope`"),
            "{text}"
        );
    }

    #[test]
    fn provider_tables_build_and_report_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            r#"
            [channels.twilio.main]
            account_sid = "AC1"
            auth_token = "t"
            [channels.slack.team]
            signing_secret = "s"
            [channels.whatsapp.biz]
            verify_token = "v"
            app_secret = "a"
            phone_number_id = "123"
            [channels.telegram.bot]
            secret_token = "tok"
            follow_up_window = "10m"
            "#,
        );
        let s = Settings::load(&path).unwrap();
        let ids: Vec<_> = s.channels.ids().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            ids,
            ["twilio/main", "slack/team", "whatsapp/biz", "telegram/bot"]
        );
        let path = write_config(
            dir.path(),
            r#"
            [channels.twilio.main]
            auth_token = "t"
            [channels.slack.team]
            bot_token = "x"
            [channels.whatsapp.biz]
            verify_token = "v"
            app_secret = "a"
            phone_number_id = "123"
            token = "typo"
            "#,
        );
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
        let path = write_config(
            dir.path(),
            "[channels.twilio.main]\nauth_token = \"t\"\n[channels.slack.team]\nbot_token = \"x\"\n",
        );
        let err = Settings::load(&path).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "channels.twilio.main.account_sid",
                "channels.slack.team.signing_secret"
            ]
        );
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
