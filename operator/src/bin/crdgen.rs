//! `crdgen [DIR]` writes the CRDs into DIR (default `crds`);
//! `crdgen --check [DIR]` exits 1 when the files there differ from the Rust types.

use std::path::PathBuf;
use std::process::ExitCode;

use xmppfed_operator::crdgen;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    args.retain(|a| a != "--check");
    let dir = PathBuf::from(args.first().map_or("crds", String::as_str));

    let result = if check {
        crdgen::drift(&dir).map(|stale| {
            if stale.is_empty() {
                println!("{}: CRDs match the Rust types", dir.display());
                true
            } else {
                eprintln!(
                    "{}: out of date: {} (run `cargo run --bin crdgen -- {}`)",
                    dir.display(),
                    stale.join(", "),
                    dir.display()
                );
                false
            }
        })
    } else {
        crdgen::write(&dir).map(|()| true)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::from(2)
        }
    }
}
