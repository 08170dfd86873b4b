//! `qsfs serve` (being written).

/// Arguments of `qsfs serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `qsfs serve`.
pub fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("qsfs serve is not built yet")
}
