//! `mscope slurm plan`: the `sbatch` submissions that run a command in shards on a Slurm cluster
//! (an array job, then a dependent merge), printed as a bash script or submitted.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::{Error, Result};
use crate::slurm::{Plan, PlanOptions, ShardedCommand};

#[derive(Subcommand)]
pub enum SlurmCommand {
    /// Print (or with --submit, submit) an array job running `COMMAND --shard I/N` for
    /// I = 0..N-1 and a merge job that runs once every shard succeeded.
    Plan(PlanArgs),
}

#[derive(Args)]
pub struct PlanArgs {
    /// Number of shards (array tasks 0..N-1).
    #[arg(long, value_name = "N")]
    shards: usize,
    /// Partition of both jobs [default: the cluster's default partition].
    #[arg(long)]
    partition: Option<String>,
    /// Time limit of each shard, in Slurm's formats (`90`, `4:00:00`, `1-00`).
    #[arg(long)]
    time: Option<String>,
    /// Generic resources of each shard [default: gpu:K when the command says `--backend cuda`
    /// or `wgpu`, K the devices of its `--devices` (1 without it); none otherwise].
    #[arg(long)]
    gres: Option<String>,
    /// CPUs of each shard (sbatch --cpus-per-task).
    #[arg(long)]
    cpus_per_task: Option<usize>,
    /// Seconds before the time limit at which a shard gets SIGTERM to keep its finished tiles
    /// and requeue itself.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    grace: u32,
    /// Submit both jobs with `sbatch` and print their ids instead of printing the script.
    #[arg(long)]
    submit: bool,
    /// The command to shard: `mscope ntk … --out OUT.safetensors` (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(command: SlurmCommand) -> Result<()> {
    match command {
        SlurmCommand::Plan(args) => plan(args),
    }
}

fn plan(args: PlanArgs) -> Result<()> {
    let workdir: PathBuf = std::env::current_dir()
        .map_err(|e| Error::input(format!("slurm plan: the working directory: {e}")))?;
    let command = ShardedCommand::parse(&args.command)?;
    let options = PlanOptions {
        shards: args.shards,
        partition: args.partition,
        time: args.time,
        gres: args.gres,
        cpus_per_task: args.cpus_per_task,
        grace_secs: args.grace,
        workdir,
    };
    let plan = Plan::new(command, &options)?;
    if args.submit {
        let ids = plan.submit()?;
        outln!("shards: job {}, merge: job {}", ids.shards, ids.merge)?;
    } else {
        out!("{}", plan.render())?;
    }
    Ok(())
}
