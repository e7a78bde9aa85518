//! The Graph emulator as a process: `graph-emulator --seed tenant.json --listen 127.0.0.1:8800`.
//! Prints the authority and Graph URLs to put in the gateway's `[graph]` section.

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut seed, mut listen) = (None, SocketAddr::from(([127, 0, 0, 1], 8800)));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => seed = args.next(),
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs an address"))?
                    .parse()?
            }
            other => anyhow::bail!(
                "unknown argument {other}; usage: graph-emulator --seed FILE [--listen ADDR]"
            ),
        }
    }
    let seed =
        seed.ok_or_else(|| anyhow::anyhow!("usage: graph-emulator --seed FILE [--listen ADDR]"))?;
    let text =
        std::fs::read_to_string(&seed).map_err(|e| anyhow::anyhow!("cannot read {seed}: {e}"))?;
    let seed: xmppfed_e2e::graph::Seed =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{seed}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let emulator = xmppfed_e2e::graph::GraphEmulator::start_on(seed, listen).await?;
        println!(
            "graph emulator: authority_url = \"{}\", graph_url = \"{}\"",
            emulator.authority_url(),
            emulator.graph_url()
        );
        tokio::signal::ctrl_c().await?;
        anyhow::Ok(())
    })
}
