//! The `switchboard` binary: parse arguments, set up logging, call the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use switchboard::cli::{Cli, Command, LogFormat};
use switchboard::config::Settings;
use switchboard::{dry_run, rule_fixtures};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: switchboard::alloc::Allocator = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchboard::alloc::configure();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => match Settings::load(&config) {
            Ok(settings) => {
                println!(
                    "{}: ok ({} channel(s))",
                    config.display(),
                    settings.channels.ids().len()
                );
                println!("rules: ok ({} rule(s))", settings.rules.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::TestRules { config, dir } => test_rules(&config, dir),
        Command::Route {
            config,
            message,
            json,
            at,
            channel,
        } => route(&config, &message, json, at.as_deref(), channel.as_deref()),
        Command::Run { config } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(switchboard::daemon::run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    tracing::error!(error = %e, "switchboard failed");
                    // Each error's text already ends with its cause's;
                    // `{:#}` would repeat the chain.
                    eprintln!("switchboard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn route(
    config: &std::path::Path,
    message: &std::path::Path,
    json: bool,
    at: Option<&str>,
    channel: Option<&str>,
) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let body = if message.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(message)
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read {}: {e}", message.display());
            return ExitCode::FAILURE;
        }
    };
    let msg = match dry_run::message_from_json(&settings, &body, channel, at) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{}: {e}", message.display());
            return ExitCode::FAILURE;
        }
    };
    let outcome = dry_run::dry_run(&settings, &msg, &Default::default());
    let text = if json {
        format!("{:#}\n", outcome.to_json())
    } else {
        outcome.render()
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    ExitCode::SUCCESS
}

fn test_rules(config: &std::path::Path, dir: Option<std::path::PathBuf>) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = dir.unwrap_or_else(|| {
        config
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(rule_fixtures::DEFAULT_DIR)
    });
    match rule_fixtures::run_dir(&settings, &dir) {
        Ok(reports) => {
            print!("{}", rule_fixtures::render(&reports));
            if reports.iter().all(|r| r.passed()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
