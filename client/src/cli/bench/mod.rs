//! `tradeplex bench`: Tradeplex against a bare ZeroMQ baseline in the same run.

use clap::Args;

/// Flags of `tradeplex bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("bench is not built yet")
}
