//! `qsfs backup` (being written).

/// Arguments of `qsfs backup`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `qsfs backup`.
pub fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("qsfs backup is not built yet")
}
