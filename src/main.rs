use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use forge_vram_proxy::backend::nvml::{format_gpus, Nvml};
use forge_vram_proxy::cli::{self, status, Target};
use forge_vram_proxy::config::{self, OverrideLog, Overrides};
use forge_vram_proxy::logs::init_tracing;
use forge_vram_proxy::server::reload::Source;
use forge_vram_proxy::server::runtime_file::{self, Listening};
use forge_vram_proxy::server::{run_reloading, shutdown_signal};
use forge_vram_proxy::Config;

/// A reverse proxy for Stable Diffusion WebUI Forge that sets GPU memory per model.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Without one, the embedded defaults serve Forge at 127.0.0.1:7860.
    #[arg(long, global = true, env = "FORGE_VRAM_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7870]; for `health` and `status`, the
    /// address to ask instead of the one the running proxy announced.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Forge backend URL [default: http://127.0.0.1:7860].
    #[arg(
        long = "backend",
        env = "FORGE_VRAM_PROXY_BACKEND",
        value_delimiter = ','
    )]
    backends: Vec<String>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Path of the NVML library [default: the system's libnvidia-ml.so.1].
    #[arg(long, global = true)]
    nvml_library: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print the effective one.
    CheckConfig {
        /// Config file to check (same as --config).
        file: Option<PathBuf>,
    },
    /// Print the GPUs NVML sees (index, UUID, name, total/used/free MiB), or why it cannot.
    Gpus,
    /// Exit 0 when the running proxy answers /proxy/health (for container health checks).
    /// It is asked where it said it listens (its runtime file), else at the configured
    /// address; --listen names the address instead.
    Health,
    /// Print the proxy's status as a table: backends, their GPUs' memory, running work,
    /// queues, the last decisions. Exit 0 when ready, 1 when no backend is healthy, 2 when
    /// the proxy cannot be reached or refuses the key.
    Status {
        /// The proxy's URL [default: the address the running proxy announced, else the
        /// configured one].
        #[arg(long)]
        url: Option<String>,
        /// A client key, sent as a bearer token (needed when the proxy has client keys).
        #[arg(long, env = "FORGE_VRAM_PROXY_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Redraw every 2 s until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen.clone(),
        backends: Overrides::backend_urls(&cli.backends),
        log: cli.log_format.clone().map(|format| OverrideLog { format }),
        nvml_library: cli.nvml_library.clone(),
    };
    let file = match &cli.command {
        Some(Command::CheckConfig { file: Some(file) }) => Some(file.clone()),
        _ => cli.config.clone(),
    };
    let config = match config::load(file.as_deref(), &overrides) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("forge-vram-proxy: invalid configuration:");
            for line in &errors.0 {
                eprintln!("  {line}");
            }
            return ExitCode::from(2);
        }
    };
    // `--listen` given to `health` or `status` names the proxy to ask.
    let listen_flag = cli.listen.is_some().then_some(config.listen);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("forge-vram-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::CheckConfig { .. }) => {
            println!("# configuration is valid; effective values:");
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Gpus) => gpus(&runtime, &config),
        Some(Command::Health) => {
            let target = Target::locate(listen_flag, &config);
            match runtime.block_on(cli::health(&target)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("forge-vram-proxy: unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Status { url, key, watch }) => {
            let target = match url {
                Some(url) => Target::from_url(&url),
                None => Ok(Target::locate(listen_flag, &config)),
            };
            status_command(&runtime, target, key.as_deref(), watch)
        }
        None => {
            init_tracing(config.log_format, &config.log_level);
            let source = Source { file, overrides };
            runtime.block_on(serve(config, source))
        }
    }
}

/// `gpus`: what NVML sees, or why it cannot.
/// The async runtime: one thread per CPU the process may use; on one CPU, a runtime of
/// one thread with no work-stealing machinery, which costs less per task switch.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut builder = match cpus {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

fn gpus(runtime: &tokio::runtime::Runtime, config: &Config) -> ExitCode {
    let library = config.nvml_library.clone();
    let listed = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            Nvml::load(library.as_deref()).and_then(|nvml| nvml.list())
        })
        .await
    });
    match listed {
        Ok(Ok(gpus)) => {
            print!("{}", format_gpus(&gpus));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("forge-vram-proxy: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("forge-vram-proxy: reading the GPUs failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `status`: the table, once or until Ctrl-C; exit 2 for a URL it cannot use.
fn status_command(
    runtime: &tokio::runtime::Runtime,
    target: Result<Target, String>,
    key: Option<&str>,
    watch: bool,
) -> ExitCode {
    let target = match target {
        Ok(target) => target,
        Err(e) => {
            eprintln!("forge-vram-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = if watch {
        status::Mode::Watch
    } else {
        status::Mode::Once
    };
    let verdict = runtime.block_on(status::run(&target, key, mode));
    ExitCode::from(verdict.exit_code())
}

async fn serve(config: Config, source: Source) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let backends: Vec<&str> = config.backends.iter().map(|b| b.url.as_str()).collect();
    let tls = config.tls.is_some();
    // Where `health` and `status` find this proxy: written before "listening" is said, so
    // whoever waits for that line finds it; removed when `serve` returns.
    let path = runtime_file::path();
    let announced = match listener.local_addr() {
        Ok(bound) => Listening::here(bound, tls)
            .announce(path.clone())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &announced {
        tracing::info!(path = %path.display(), error = %e, "no runtime file: `health` and `status` will ask the configured address");
    }
    tracing::info!(addr = %addr, backends = ?backends, tls, "listening");
    match run_reloading(listener, config, shutdown_signal(), source).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
