//! The command line: `switchboard run | check | test-rules`, each with `--config PATH`.

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
