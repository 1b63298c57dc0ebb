//! `bst-train`: train, evaluate, score and ablate the Behavior Sequence Transformer.
//!
//! With no arguments it trains BST on the built-in synthetic data.

mod ablate;
mod bench;
mod cli;
mod device;
mod generate;
mod plot;
mod progress;
mod run;
mod serve;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    run::set_cache_dir(cli.cache_dir());
    match cli.command.unwrap_or_default() {
        cli::Command::Train(args) => run::train(&args),
        cli::Command::Ablate(args) => ablate::ablate(&args),
        cli::Command::Eval(args) => serve::eval(&args),
        cli::Command::Predict(args) => serve::predict(&args),
        cli::Command::Rank(args) => serve::rank(&args),
        cli::Command::Bench(args) => bench::bench(&args),
        cli::Command::GenerateTaobao(args) => generate::generate(&args),
    }
}
