//! `crmflow`: simulate workflows on sample data, run the stream processor, generate demo load.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crmflow::simulate::simulate;
use crmflow_codec::TopicNames;

#[derive(Parser)]
#[command(name = "crmflow", version, about = "Turns CRM change events into user provisioning and sales activities")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the decision core over a JSON Lines file of records, without Kafka.
    Simulate {
        /// Input file of `{"topic","key","timestamp","value"}` lines, or `-` for stdin.
        #[arg(long, short)]
        input: String,
        /// Where to write output records (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate { input, output } => run_simulate(&input, output),
    }
}

fn run_simulate(input: &str, output: Option<PathBuf>) -> Result<()> {
    let reader: Box<dyn io::BufRead> = if input == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(input).with_context(|| format!("cannot open input file {input}"))?;
        Box::new(BufReader::new(file))
    };
    let writer: Box<dyn Write> = match &output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create output file {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let summary = simulate(reader, writer, &TopicNames::default()).context("simulation failed")?;
    eprint!("{}", summary.report());
    Ok(())
}
