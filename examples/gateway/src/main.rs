//! The `gateway` binary.
//!
//! Run with:
//! ```text
//! gateway demo                    # bundled demo config + in-process echo upstream
//! gateway --config gateway.yaml   # your config
//! gateway --check gateway.yaml    # validate and exit
//! gateway demo-upstream           # just the demo upstream on 127.0.0.1:9000
//! gateway routes -c gateway.yaml  # the route table, with each route's stages in order
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway::{Compiled, Config, DEMO_CONFIG, DEMO_UPSTREAM_ADDR};

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "The reference API gateway built from the gateway-* tower crates"
)]
struct Cli {
    /// Run the gateway with this configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate this configuration file and exit (status 0 when valid, 1 with errors).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bundled demo: the gateway on 127.0.0.1:8080 (admin on 127.0.0.1:9901) in front of
    /// an in-process echo upstream on 127.0.0.1:9000.
    Demo,
    /// Print the compiled route table of a configuration file, in precedence order, with the
    /// stages each route's requests go through, in order; then exit.
    Routes {
        /// The configuration file (default: the bundled demo).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run only the demo echo upstream.
    DemoUpstream {
        /// Address to bind.
        #[arg(long, default_value = DEMO_UPSTREAM_ADDR)]
        bind: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Some(path) = &cli.check {
        return match Config::load(path).and_then(|c| Compiled::new(&c, &path.display().to_string()))
        {
            Ok(compiled) => {
                tracing::info!(file = %path.display(), routes = compiled.router.routes().len(), upstreams = compiled.upstreams.len(), "configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start runtime");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Routes { config, json }) = &cli.command {
        return print_routes(config.as_deref(), *json);
    }
    let (config, file) = match (&cli.command, &cli.config) {
        (Some(Command::DemoUpstream { bind }), _) => {
            return rt.block_on(async {
                match gateway::bind_demo_upstream(*bind).await {
                    Ok(l) => {
                        tracing::info!(addr = %bind, "demo upstream listening");
                        tokio::select! {
                            () = gateway::serve_demo_upstream(l) => {}
                            () = shutdown_signal() => {}
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        tracing::error!(addr = %bind, error = %e, "cannot bind demo upstream");
                        ExitCode::FAILURE
                    }
                }
            });
        }
        (Some(Command::Demo), _) => (
            Config::parse(DEMO_CONFIG, "<bundled demo.yaml>"),
            "<bundled demo.yaml>".to_owned(),
        ),
        (Some(Command::Routes { .. }), _) => return ExitCode::SUCCESS, // handled above
        (None, Some(path)) => (Config::load(path), path.display().to_string()),
        (None, None) => {
            tracing::error!(
                "nothing to run: pass --config FILE, --check FILE, or the `demo` command (see --help)"
            );
            return ExitCode::FAILURE;
        }
    };
    let compiled = match config.and_then(|c| Compiled::new(&c, &file)) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let demo = if matches!(cli.command, Some(Command::Demo)) {
            let addr: SocketAddr = DEMO_UPSTREAM_ADDR.parse().expect("valid demo address");
            match gateway::bind_demo_upstream(addr).await {
                Ok(l) => Some(tokio::spawn(gateway::serve_demo_upstream(l))),
                Err(e) => {
                    tracing::error!(addr = %addr, error = %e, "cannot bind the demo upstream");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let running = match gateway::start(compiled) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the gateway");
                return ExitCode::FAILURE;
            }
        };
        if demo.is_some() {
            tracing::info!("demo ready: try `curl -s http://127.0.0.1:8080/users/42` and `curl -s http://127.0.0.1:9901/routes`");
        }
        if let Some(path) = &cli.config {
            running.set_config_file(path);
        }
        // SIGHUP reloads the configuration file; an invalid one is logged and changes nothing.
        #[cfg(unix)]
        {
            let running = &running;
            let hangups = async {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    return std::future::pending().await;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = running.reload();
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = shutdown_signal() => {}
                () = hangups => {}
            }
        }
        #[cfg(not(unix))]
        shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        running.shutdown_and_wait().await;
        if let Some(d) = demo {
            d.abort();
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

#[allow(clippy::print_stdout)]
fn print_routes(path: Option<&std::path::Path>, json: bool) -> ExitCode {
    let (config, file) = match path {
        Some(p) => (Config::load(p), p.display().to_string()),
        None => (
            Config::parse(DEMO_CONFIG, "<bundled demo.yaml>"),
            "<bundled demo.yaml>".to_owned(),
        ),
    };
    let compiled = match config.and_then(|c| Compiled::new(&c, &file)) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    let table = compiled.route_table();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&table).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!("{file}: {} routes, tried in this order", table.len());
    println!(
        "every request first: size limits (431/414/413), path normalization (400), hop-by-hop and internal headers removed, client IP resolved, routing (404)"
    );
    for r in &table {
        let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        let mut when = vec![format!("{} {}", text("path_kind"), text("path"))];
        if let Some(h) = r["host"].as_str() {
            when.insert(0, format!("host {h}"));
        }
        for (k, label) in [
            ("methods", "methods"),
            ("headers", "headers"),
            ("query", "query"),
        ] {
            let l = list(k);
            if !l.is_empty() {
                when.push(format!("{label} {l}"));
            }
        }
        println!();
        println!("#{} {}: {}", r["precedence"], text("name"), when.join(", "));
        if let Some(stages) = r["stages"].as_array() {
            for (i, s) in stages.iter().enumerate() {
                println!(
                    "  {}. {:<10} {}",
                    i + 1,
                    s["stage"].as_str().unwrap_or_default(),
                    s["config"]
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn report(e: &gateway::ConfigError) {
    for line in e.to_string().lines() {
        tracing::error!("{line}");
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal, and never with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
