//! The Graph emulator as a process:
//! `graph-emulator --seed tenant.json [--listen 127.0.0.1:8800] [--tls-cert cert.pem --tls-key key.pem]`.
//! Prints the authority and Graph URLs to put in the gateway's `[graph]` section.
//! With a certificate it serves HTTPS (as a Pod behind a Service: the gateway
//! takes plain http only towards loopback).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const USAGE: &str =
    "usage: graph-emulator --seed FILE [--listen ADDR] [--tls-cert PEM --tls-key PEM]";

fn tls(cert: &str, key: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut seed, mut listen) = (None, SocketAddr::from(([127, 0, 0, 1], 8800)));
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--seed" => seed = Some(value()?),
            "--listen" => listen = value()?.parse()?,
            "--tls-cert" => cert = Some(value()?),
            "--tls-key" => key = Some(value()?),
            other => anyhow::bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let seed = seed.ok_or_else(|| anyhow::anyhow!("{USAGE}"))?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(tls(&cert, &key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together; {USAGE}"),
    };
    let text =
        std::fs::read_to_string(&seed).map_err(|e| anyhow::anyhow!("cannot read {seed}: {e}"))?;
    let seed: xmppfed_e2e::graph::Seed =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{seed}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let emulator = xmppfed_e2e::graph::GraphEmulator::start_with(seed, listen, tls).await?;
        println!(
            "graph emulator: authority_url = \"{}\", graph_url = \"{}\"",
            emulator.authority_url(),
            emulator.graph_url()
        );
        // A Pod is stopped with SIGTERM, a terminal with Ctrl-C.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
