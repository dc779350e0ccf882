//! The `gatehouse` command line: run, check, hash-key. The only place that prints and exits.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Pingora allocates and frees a few dozen small objects per proxied request; with glibc's
/// malloc that was about 14% of the proxy's CPU in the `proxy-small` profile (see
/// loadtest/PROFILE.md). mimalloc's thread-local free lists make it markedly cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An edge API gateway built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config.
    Run {
        #[arg(short = 'c', long = "config", default_value = "conf/gatehouse.yaml")]
        config: String,
        /// Take the listening sockets over from a running instance (graceful upgrade).
        #[arg(short = 'u', long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short = 'd', long)]
        daemon: bool,
    },
    /// Validate a config file; exit 0 when valid, 1 with every error otherwise.
    Check {
        #[arg(short = 'c', long = "config", default_value = "conf/gatehouse.yaml")]
        config: String,
    },
    /// Print the sha256 form of an API key for consumers[].api_keys.
    HashKey { key: String },
    /// Zero-downtime hand-over to a new process with this binary and config.
    Upgrade {
        #[arg(short = 'c', long = "config", default_value = "conf/gatehouse.yaml")]
        config: String,
        /// Where the new process logs: a file (default <server.data_dir>/gatehouse.log), or
        /// `-` for this command's own stdout/stderr.
        #[arg(long)]
        log: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match gatehouse::check(&config) {
            Ok(snap) => {
                println!(
                    "{config}: ok ({} routes, {} upstreams, version {})",
                    snap.router.len(),
                    snap.upstreams.len(),
                    &snap.loaded.version_hash[..12]
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprint!("{}", gatehouse::StartError::Config(errs));
                ExitCode::from(1)
            }
        },
        Command::HashKey { key } => {
            println!("{}", gatehouse::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Upgrade { config, log } => match gatehouse::upgrade(&config, log.as_deref()) {
            Ok(r) => {
                println!("upgrade: new process logs to {}", r.log);
                println!(
                    "upgrade: new process {} ready after {:.2}s (was {})",
                    r.new_pid,
                    r.ready_after.as_secs_f64(),
                    r.old_pid
                );
                match r.old_exited_after {
                    Some(d) => {
                        println!(
                            "upgrade: old process {} drained and exited after {:.2}s",
                            r.old_pid,
                            d.as_secs_f64()
                        );
                        ExitCode::SUCCESS
                    }
                    None => {
                        eprintln!(
                            "upgrade: old process {} is still running after its grace period",
                            r.old_pid
                        );
                        ExitCode::from(1)
                    }
                }
            }
            Err(e) => {
                eprintln!("upgrade failed: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            init_tracing();
            match gatehouse::run(gatehouse::RunOptions {
                config_path: config,
                upgrade,
                daemon,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
