//! Generates what the .deb ships beside the binary from the one CLI definition
//! (`snaprtcd::cli::Cli`): the man page snaprtcd(8) and bash/zsh/fish completions.
//! `cargo run --example gen-assets -- OUTDIR` (packaging/build-debs.sh runs it).

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;
use snaprtcd::cli::Cli;

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: gen-assets OUTDIR"))?,
    );
    std::fs::create_dir_all(&out)?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("snaprtcd {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    std::fs::write(out.join("snaprtcd.8"), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd.clone(), "snaprtcd", &out)?;
        println!("{}", path.display());
    }
    println!("{}", out.join("snaprtcd.8").display());
    Ok(())
}
