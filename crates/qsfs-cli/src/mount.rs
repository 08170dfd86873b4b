//! `qsfs mount` (being written).

/// Arguments of `qsfs mount`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `qsfs mount`.
pub fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("qsfs mount is not built yet")
}
