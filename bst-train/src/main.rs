//! `bst-train`: train, evaluate, score and ablate the Behavior Sequence Transformer.
//!
//! With no arguments it trains BST on the built-in synthetic data.

mod ablate;
mod bench;
mod bench_group;
mod cli;
mod cluster;
mod device;
mod generate;
#[cfg(feature = "mpi")]
mod mpi_group;
mod plot;
mod progress;
mod run;
mod serve;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Under `mpirun` (feature `mpi`): one rank of a data-parallel group.
    #[cfg(feature = "mpi")]
    let _universe = mpi_group::init()?;
    let cli = cli::Cli::parse();
    run::set_cache_dir(cli.cache_dir());
    let command = cli.command.unwrap_or_default();
    let data_parallel = matches!(command, cli::Command::Train(_) | cli::Command::Bench(_));
    let result = match command {
        // The others would run whole on every rank.
        _ if !data_parallel && cluster::group().is_some() => Err(anyhow::anyhow!(
            "under mpirun with several ranks only `train` and `bench` run (data-parallel); run the others in one process"
        )),
        cli::Command::Train(args) => run::train(&args),
        cli::Command::Ablate(args) => ablate::ablate(&args),
        cli::Command::Eval(args) => serve::eval(&args),
        cli::Command::Predict(args) => serve::predict(&args),
        cli::Command::Rank(args) => serve::rank(&args),
        cli::Command::Bench(args) => bench::bench(&args),
        cli::Command::GenerateTaobao(args) => generate::generate(&args),
    };
    // A rank that fails stops every rank (the others would wait for it forever).
    #[cfg(feature = "mpi")]
    if let (Err(e), Some(_)) = (&result, cluster::group()) {
        mpi_group::abort(&format!("error: {e:#}"), 1);
    }
    result
}
