//! `mscope merge OUT`: the shards written by `--shard I/N` runs (`OUT.shard-I-of-N.safetensors`)
//! assembled into `OUT`, byte for byte the file the same command without `--shard` writes.

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::io::{check_outputs, shards};

#[derive(Args)]
#[command(after_help = "\
Reads every OUT.shard-I-of-N.safetensors beside OUT and refuses, listing the files, when a \
shard is missing, corrupt or truncated, damaged (its data no longer match the digest its \
manifest records), a duplicate (a copied or renamed shard), or of another \
run (other inputs, arguments, mscope version, backend or thread count). The shards are kept; \
remove them once OUT is written.")]
pub struct MergeArgs {
    /// The output the shards were computed for: the sharded command's `--out`.
    out: PathBuf,
}

pub fn run(args: MergeArgs) -> Result<()> {
    check_outputs(&[], &[("OUT", Some(&args.out))])?;
    let shards = shards::read_all(&args.out)?;
    let command = shards[0].manifest.job["command"].as_str().unwrap_or("");
    match command {
        "ntk" => super::ntk::merge(&args.out, &shards),
        "embed" => super::embed::merge(&args.out, &shards),
        "compare" => super::compare::merge(&args.out, &shards),
        other => Err(Error::input(format!(
            "{}: shards of `{other}`, which this mscope cannot merge",
            shards[0].file.path().display()
        ))),
    }
}
