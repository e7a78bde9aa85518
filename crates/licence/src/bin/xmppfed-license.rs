//! `xmppfed-license`: issue and inspect xmppfed licences (for the key holder).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jiff::Timestamp;
use xmppfed_licence::{Licence, generate_key, issue, verify};

#[derive(Parser)]
#[command(
    name = "xmppfed-license",
    version,
    about = "Issue and inspect xmppfed licences"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a signing key pair: writes DIR/licence-signing.key (keep it secret) and DIR/licence-signing.pub.
    Keygen { dir: PathBuf },
    /// Issue a licence, printed on stdout.
    Issue {
        /// File holding the base64 PKCS#8 private key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        licensee: String,
        #[arg(long)]
        nodes: u32,
        /// RFC 3339 expiry, e.g. 2027-12-31T23:59:59Z.
        #[arg(long)]
        expires: Timestamp,
        #[arg(long = "feature")]
        features: Vec<String>,
    },
    /// Verify a licence file and print what it grants.
    Inspect {
        file: PathBuf,
        /// File holding the base64 public key.
        #[arg(long)]
        public_key: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppfed-license: {e}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Keygen { dir } => {
            let (private, public) = generate_key().map_err(|e| e.to_string())?;
            let key = dir.join("licence-signing.key");
            // Created private (0600) and never over an existing key.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&key).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    format!("{} exists: not overwriting a signing key", key.display())
                }
                _ => format!("cannot create {}: {e}", key.display()),
            })?;
            std::io::Write::write_all(&mut file, format!("{private}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            std::fs::write(dir.join("licence-signing.pub"), format!("{public}\n"))
                .map_err(|e| e.to_string())?;
            println!("public key: {public}");
        }
        Command::Issue {
            key,
            id,
            licensee,
            nodes,
            expires,
            features,
        } => {
            let licence = Licence {
                id,
                licensee,
                nodes,
                issued: Timestamp::now(),
                expires,
                features,
            };
            println!(
                "{}",
                issue(&licence, &read(&key)?).map_err(|e| e.to_string())?
            );
        }
        Command::Inspect { file, public_key } => {
            let l = verify(&read(&file)?, &read(&public_key)?).map_err(|e| e.to_string())?;
            let state = l.state(Timestamp::now());
            println!(
                "valid signature\nid: {}\nlicensee: {}\nnodes: {}\nissued: {}\nexpires: {} ({state:?})\nfeatures: {}",
                l.id,
                l.licensee,
                l.nodes,
                l.issued,
                l.expires,
                l.features.join(", ")
            );
        }
    }
    Ok(())
}
