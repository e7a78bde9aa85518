//! Parses `/metrics` the way a Prometheus scraper would.

use prometheus_parse::{Sample, Scrape};

/// Parses Prometheus text (OpenMetrics is accepted: its `# EOF` line is a comment to this parser).
pub fn parse(text: &str) -> anyhow::Result<Scrape> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Ok(Scrape::parse(lines)?)
}

/// The samples of metric `name`.
pub fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}
