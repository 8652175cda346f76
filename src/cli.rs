//! The command line: `switchboard run | check | route | test-rules`, each with `--config PATH`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "Omnichannel inquiry router")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr. The level comes from RUST_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT (SIGHUP reloads the config).
    Run {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate every config file and exit non-zero on any problem.
    Check {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Run one message (the generic webhook's JSON) through rules and
    /// routing against the roster, everyone available; nothing is stored.
    Route {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// A JSON file in the generic webhook's shape (`-` for stdin).
        message: PathBuf,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// When the message arrives (RFC 3339); default now.
        #[arg(long)]
        at: Option<String>,
        /// The channel it arrives on, `adapter/name`; default the first
        /// generic channel configured.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Run the rule fixtures in DIR (default: `rules.tests/` next to the
    /// config file) and exit non-zero if any fails.
    TestRules {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
