use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xmppfed_config::GatewayConfig;
use xmppfed_gateway::SANDBOX_CONFIG;
use xmppfed_gateway::process::{Gateway, SERVICE_NAME, VERSION};
use xmppfed_telemetry::TelemetryOptions;

/// xmppfed gateway: federates an XMPP domain with a Microsoft Teams tenant.
#[derive(Parser)]
#[command(name = "xmppfed-gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        #[arg(long, short, env = "XMPPFED_CONFIG")]
        config: PathBuf,
    },
    /// Run the gateway locally on its embedded default (examples/local/gateway.toml).
    Sandbox {
        /// Use this file instead of the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check, read-only, that the Microsoft 365 tenant allows what the gateway
    /// needs (permissions, domain, licence, MFA policies); exit code 1 if not.
    CheckTenant {
        #[arg(long, short, env = "XMPPFED_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything.
    CheckConfig {
        file: PathBuf,
        /// Do not check that the secrets it names can be read (e.g. on a build machine).
        #[arg(long)]
        skip_secrets: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckTenant { config } => match check_tenant(&config) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::CheckConfig { file, skip_secrets } => check_config(&file, skip_secrets),
        Command::Run { config: file } => GatewayConfig::load(&file)
            .map_err(anyhow::Error::from)
            .and_then(|c| serve(c, Some(file))),
        Command::Sandbox { config } => sandbox_config(config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|c| serve(c, None)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppfed-gateway: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once.
fn describe(e: &anyhow::Error) -> String {
    xmppfed_gateway::said_once(e.as_ref())
}

fn check_config(file: &std::path::Path, skip_secrets: bool) -> anyhow::Result<()> {
    let config = GatewayConfig::load(file)?;
    if !skip_secrets {
        config
            .check_secrets()
            .with_context(|| format!("in {}", file.display()))?;
    }
    println!(
        "{}: valid configuration for XMPP domain {}",
        file.display(),
        config.xmpp.domain
    );
    Ok(())
}

/// Prints the table of checks; `Ok(false)` when one failed.
fn check_tenant(file: &std::path::Path) -> anyhow::Result<bool> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = GatewayConfig::load(file)?;
    let graph_config = config
        .graph
        .as_ref()
        .with_context(|| format!("{} has no [graph] section", file.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = |c: &xmppfed_config::GraphConfig| {
            xmppfed_gateway::graph::from_config(c, xmppfed_gateway::graph::Budgets::new(&c.limits))
        };
        let graph = client(graph_config)?;
        let shadow = config
            .shadow_accounts
            .tenant
            .as_ref()
            .map(client)
            .transpose()?;
        let checks =
            xmppfed_gateway::preflight::check_tenants(&config, &graph, shadow.as_ref()).await;
        print!("{}", xmppfed_gateway::preflight::render(&checks));
        let passed = xmppfed_gateway::preflight::passed(&checks);
        println!(
            "{}",
            if passed {
                "the tenant is ready for the gateway"
            } else {
                "the tenant is not ready: fix what FAILs (docs/tenant-setup.md)"
            }
        );
        Ok(passed)
    })
}

fn sandbox_config(
    file: Option<&std::path::Path>,
) -> Result<GatewayConfig, xmppfed_config::ConfigError> {
    match file {
        Some(file) => GatewayConfig::load(file),
        None => GatewayConfig::from_toml_str(SANDBOX_CONFIG),
    }
}

/// Runs the gateway; `file`: the configuration it was started from, read
/// again while running (`None`: the sandbox).
fn serve(config: GatewayConfig, file: Option<PathBuf>) -> anyhow::Result<()> {
    let sandbox = file.is_none();
    // One TLS stack for the whole process: rustls with aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    config.check_secrets()?;

    let telemetry = xmppfed_telemetry::init(&TelemetryOptions {
        service_name: SERVICE_NAME,
        service_version: VERSION,
        default_log_filter: config.telemetry.log_level.clone(),
    })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        if sandbox {
            print_sandbox_banner(&config)?;
        }
        tracing::info!(config = %config.to_toml_string()?, "resolved configuration");
        let mut gateway = Gateway::start(&config).await?;
        if let Some(file) = file {
            gateway = gateway.reload_from(file);
        }
        gateway.run(xmppfed_telemetry::shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // Flush spans whatever the outcome, outside the runtime (the exporter blocks).
    drop(runtime);
    telemetry.shutdown();
    result
}

fn print_sandbox_banner(config: &GatewayConfig) -> anyhow::Result<()> {
    eprintln!(
        "xmppfed gateway sandbox for XMPP domain {domain}\n\
         \n\
         Resolved configuration:\n\
         {toml}\n\
         Health:  http://{admin}/healthz  http://{admin}/readyz\n\
         Metrics: http://{admin}/metrics\n\
         Stop with Ctrl-C.\n",
        domain = config.xmpp.domain,
        toml = config.to_toml_string()?,
        admin = config.admin.listen,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn each_cause_is_said_once() {
        let inner = std::io::Error::other("no certificate in the file");
        let e = anyhow::Error::new(inner)
            .context("s2s TLS: no certificate in the file")
            .context("in /etc/xmppfed/config/gateway.toml");
        assert_eq!(
            describe(&e),
            "in /etc/xmppfed/config/gateway.toml: s2s TLS: no certificate in the file"
        );
    }
}
