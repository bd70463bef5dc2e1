//! Slurm batch jobs for a sharded command: an array job whose task `i` runs the command with
//! `--shard i/N`, and a merge job that runs `mscope merge OUT` once every shard succeeded.
//!
//! mscope schedules nothing itself; this module only writes what a user would give `sbatch`, so
//! the same text is printed by `mscope slurm plan` (a bash script that submits both jobs) and
//! submitted by `mscope slurm plan --submit`.
//!
//! Preemption and time limits: the array job asks Slurm to send SIGTERM to its batch shell
//! `grace` seconds before the time limit (`--signal=B:TERM@grace`) and is requeueable
//! (`--requeue`). The shard's batch script passes the signal on to the shard, which keeps its
//! finished tiles and exits with [`EXIT_PREEMPTED`] (75); the script then requeues its own array
//! task (`scontrol requeue ARRAYID_TASK`, never `$SLURM_JOB_ID`: in the array's last task that is
//! the array's own id, and requeueing it reruns every task), and the rerun resumes from the
//! finished tiles. Slurm holds a requeued job for about two minutes before it may start again
//! (its begin time is set ahead). A task that failed for any other reason is not requeued, so
//! the merge (`afterok`) is cancelled (`--kill-on-invalid-dep=yes`) instead of waiting forever.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::io::preemption::EXIT_PREEMPTED;
use crate::io::shards;

/// Subcommands that take `--shard I/N` and whose shards `mscope merge` assembles.
pub const SHARDED_SUBCOMMANDS: &[&str] = &["ntk", "embed", "compare"];

/// A command to run in shards: `PROGRAM SUBCOMMAND ARGS…`, as the user wrote it after `--`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedCommand {
    /// The mscope executable the jobs run (also for the merge), e.g. `mscope` or a full path.
    pub program: String,
    pub subcommand: String,
    /// The subcommand's arguments, `--shard` not among them.
    pub args: Vec<String>,
    /// The `--out` value: the merged file, and the stem of the shards and logs.
    pub out: String,
    /// GPUs each shard uses: 0 unless the command asks for a GPU backend (`--backend cuda` or
    /// `wgpu`), then the distinct indices of its `--devices` (1 without it).
    pub gpus: usize,
}

impl ShardedCommand {
    /// Reads `words` (`PROGRAM SUBCOMMAND ARGS…`); an error names what is missing or refused.
    pub fn parse(words: &[String]) -> Result<Self> {
        let [program, subcommand, args @ ..] = words else {
            return Err(Error::input(format!(
                "slurm plan: give the command to shard after `--`, e.g. \
                 `-- mscope ntk --model M --data D --out K.safetensors` (got {} word(s))",
                words.len()
            )));
        };
        if !SHARDED_SUBCOMMANDS.contains(&subcommand.as_str()) {
            return Err(Error::input(format!(
                "slurm plan: `{program} {subcommand}` cannot be sharded; commands that take \
                 --shard: {}",
                SHARDED_SUBCOMMANDS.join(", ")
            )));
        }
        if let Some(word) = words.iter().find(|w| w.chars().any(char::is_control)) {
            return Err(Error::input(format!(
                "slurm plan: the argument {word:?} holds a line break or another control \
                 character, which a batch script cannot carry safely"
            )));
        }
        if args
            .iter()
            .any(|a| a == "--shard" || a.starts_with("--shard="))
        {
            return Err(Error::input(
                "slurm plan: the command already has --shard; the array job adds \
                 `--shard $SLURM_ARRAY_TASK_ID/N` to each task itself",
            ));
        }
        let out = flag_value(args, "--out")?.ok_or_else(|| {
            Error::input(format!(
                "slurm plan: `{program} {subcommand}` has no --out; the shards are named after \
                 it and `mscope merge` writes it"
            ))
        })?;
        let gpu = matches!(flag_value(args, "--backend")?, Some(b) if b == "cuda" || b == "wgpu");
        // Inside the job Slurm renumbers the allocated GPUs from 0, so `--devices 0,1` needs two.
        let devices: std::collections::BTreeSet<String> = flag_value(args, "--devices")?
            .map(|list| list.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let gpus = match gpu {
            false => 0,
            true => devices.len().max(1),
        };
        Ok(ShardedCommand {
            program: program.clone(),
            subcommand: subcommand.clone(),
            args: args.to_vec(),
            out,
            gpus,
        })
    }
}

/// The value of `flag` among `args` (`--flag VALUE` or `--flag=VALUE`; the last one wins, as
/// for clap), or an error when it ends the command without a value.
fn flag_value(args: &[String], flag: &str) -> Result<Option<String>> {
    let mut value = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == flag {
            let given = words.next().ok_or_else(|| {
                Error::input(format!(
                    "slurm plan: {flag} ends the command without a value"
                ))
            })?;
            value = Some(given.clone());
        } else if let Some(given) = word.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(given.to_string());
        }
    }
    Ok(value)
}

/// What the jobs ask Slurm for, beside the command itself.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Number of shards: array tasks `0..shards`.
    pub shards: usize,
    pub partition: Option<String>,
    /// Time limit of each shard (Slurm's formats: `MM`, `HH:MM:SS`, `D-HH`, …).
    pub time: Option<String>,
    /// Generic resources of each shard; `None` asks for `gpu:K` when the command runs on K GPUs.
    pub gres: Option<String>,
    pub cpus_per_task: Option<usize>,
    /// Seconds before the time limit at which Slurm sends the shard SIGTERM.
    pub grace_secs: u32,
    /// Working directory of both jobs (relative paths in the command are read from it).
    pub workdir: PathBuf,
}

/// One `sbatch` submission: its options and the batch script given on standard input.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchJob {
    pub options: Vec<String>,
    pub script: String,
}

/// The array job of the shards and the merge job that depends on it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub shards: BatchJob,
    /// Without its `--dependency`, which names the array job's id once it is known.
    pub merge: BatchJob,
    pub command: ShardedCommand,
}

/// Job ids Slurm gave the two submissions.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub shards: String,
    pub merge: String,
}

impl Plan {
    pub fn new(command: ShardedCommand, options: &PlanOptions) -> Result<Self> {
        let n = options.shards;
        if n == 0 {
            return Err(Error::input("slurm plan: --shards must be at least 1"));
        }
        let workdir = options.workdir.to_str().ok_or_else(|| {
            Error::input(format!(
                "slurm plan: the working directory {} is not UTF-8, which sbatch's --chdir \
                 cannot be given here",
                options.workdir.display()
            ))
        })?;
        // Logs beside the shards, named like them (`k.safetensors` → `k.shard-%a-of-N.log`);
        // Slurm expands `%` patterns in log names, so the user's own `%` is doubled.
        let log = |suffix: &str| {
            let out = Path::new(&command.out);
            let name = out.with_file_name(format!("{}.", shards::stem(out)));
            format!("{}{suffix}", name.to_string_lossy().replace('%', "%%"))
        };
        let gres = match (&options.gres, command.gpus) {
            (Some(gres), _) => Some(gres.clone()),
            (None, 0) => None,
            (None, gpus) => Some(format!("gpu:{gpus}")),
        };

        let mut common = vec![format!("--chdir={workdir}")];
        if let Some(partition) = &options.partition {
            common.push(format!("--partition={partition}"));
        }

        let mut shard_options = vec![
            format!("--job-name=mscope-{}-shards", command.subcommand),
            format!("--array=0-{}", n - 1),
        ];
        shard_options.extend(common.iter().cloned());
        if let Some(time) = &options.time {
            shard_options.push(format!("--time={time}"));
        }
        if let Some(gres) = gres {
            shard_options.push(format!("--gres={gres}"));
        }
        if let Some(cpus) = options.cpus_per_task {
            shard_options.push(format!("--cpus-per-task={cpus}"));
        }
        shard_options.extend([
            "--requeue".to_string(),
            format!("--signal=B:TERM@{}", options.grace_secs),
            "--open-mode=append".to_string(),
            format!("--output={}", log(&format!("shard-%a-of-{n}.log"))),
        ]);

        let mut merge_options = vec![format!("--job-name=mscope-{}-merge", command.subcommand)];
        merge_options.extend(common);
        merge_options.extend([
            "--kill-on-invalid-dep=yes".to_string(),
            "--open-mode=append".to_string(),
            format!("--output={}", log("merge.log")),
        ]);

        Ok(Plan {
            shards: BatchJob {
                options: shard_options,
                script: shard_script(&command, n),
            },
            merge: BatchJob {
                options: merge_options,
                script: merge_script(&command, n),
            },
            command,
        })
    }

    /// The `--dependency` option of the merge job once the array job is `shards_id`.
    fn merge_dependency(shards_id: &str) -> String {
        format!("--dependency=afterok:{shards_id}")
    }

    /// A bash script that submits both jobs with `sbatch` and prints their ids: what
    /// [`Plan::submit`] does, for a user to read, edit or run.
    pub fn render(&self) -> String {
        let out = shell_quote(&self.command.out);
        let mut text = format!(
            "#!/usr/bin/env bash\n\
             # Written by `mscope slurm plan`: the shards of `{} {} … --out {out}` as one array\n\
             # job, then `mscope merge {out}` once every shard succeeded.\n\
             set -euo pipefail\n",
            self.command.program, self.command.subcommand
        );
        text += &render_submission("shards", &self.shards.options, &self.shards.script);
        let mut merge_options = vec![Self::merge_dependency("$shards")];
        merge_options.extend(self.merge.options.iter().cloned());
        text += &render_submission("merge", &merge_options, &self.merge.script);
        text += "echo \"shards: job $shards, merge: job $merge\"\n";
        text
    }

    /// Submits the array job, then the merge job depending on it, with `sbatch --parsable`.
    pub fn submit(&self) -> Result<Submitted> {
        let shards = sbatch(&self.shards.options, &self.shards.script)?;
        let mut merge_options = vec![Self::merge_dependency(&shards)];
        merge_options.extend(self.merge.options.iter().cloned());
        let merge = sbatch(&merge_options, &self.merge.script).map_err(|e| {
            Error::input(format!(
                "{e}\nthe shards were submitted as job {shards}: cancel them with \
                 `scancel {shards}` or merge by hand with `mscope merge {}`",
                self.command.out
            ))
        })?;
        Ok(Submitted { shards, merge })
    }
}

/// `VAR=$(sbatch --parsable OPTIONS <<'DELIMITER' … DELIMITER)` and the id cut from its answer
/// (`id` or `id;cluster`). The scripts hold no line equal to a delimiter: [`ShardedCommand`]
/// refuses arguments with line breaks.
fn render_submission(var: &str, options: &[String], script: &str) -> String {
    let delimiter = format!("MSCOPE_{}_SCRIPT", var.to_uppercase());
    let mut text = format!("{var}=$(sbatch --parsable");
    for option in options {
        text.push_str(" \\\n    ");
        // `$shards` in the merge's dependency is expanded by the shell running the plan.
        if option.contains("$shards") {
            text.push_str(&format!("\"{option}\""));
        } else {
            text.push_str(&shell_quote(option));
        }
    }
    text.push_str(&format!(" <<'{delimiter}'\n{script}{delimiter}\n)\n"));
    text.push_str(&format!("{var}=${{{var}%%;*}}\n"));
    text
}

/// Runs `sbatch --parsable OPTIONS` with `script` on standard input and returns the job id.
fn sbatch(options: &[String], script: &str) -> Result<String> {
    let mut child = Command::new("sbatch")
        .arg("--parsable")
        .args(options)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::input(format!(
                "slurm plan --submit: cannot run sbatch ({e}); it needs Slurm's sbatch on PATH \
                 (without it, print the plan and submit it where Slurm is)"
            ))
        })?;
    // A write error shows up as sbatch's own failure below.
    let _ = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes());
    let output = child
        .wait_with_output()
        .map_err(|e| Error::input(format!("slurm plan --submit: sbatch: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Error::input(format!(
            "slurm plan --submit: sbatch {} failed ({}): {}",
            options.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    parse_job_id(&stdout).ok_or_else(|| {
        Error::input(format!(
            "slurm plan --submit: sbatch --parsable answered {:?}, not a job id",
            stdout.trim()
        ))
    })
}

/// The job id of `sbatch --parsable`'s answer: `ID` or `ID;CLUSTER`.
pub fn parse_job_id(answer: &str) -> Option<String> {
    let id = answer.trim().split(';').next()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// The array task's script: runs the command on shard `$SLURM_ARRAY_TASK_ID` of `n`, passes
/// SIGTERM on to it, and requeues the task when the shard stopped early with
/// [`EXIT_PREEMPTED`] (75).
fn shard_script(command: &ShardedCommand, n: usize) -> String {
    let run = command_line(command);
    format!(
        "#!/bin/bash\n\
         # One shard of {n} (array task $SLURM_ARRAY_TASK_ID), written by `mscope slurm plan`.\n\
         # On SIGTERM (the time limit's warning, preemption) the shard keeps its finished tiles\n\
         # and exits with {EXIT_PREEMPTED}; the task then requeues itself and resumes from them.\n\
         set -u\n\
         trap 'kill -TERM \"${{shard:-}}\" 2>/dev/null' TERM\n\
         {run} --shard \"$SLURM_ARRAY_TASK_ID/{n}\" &\n\
         shard=$!\n\
         wait \"$shard\"\n\
         status=$?\n\
         # A trap ends the first wait early (status above 128): wait for the shard's own status.\n\
         if [ \"$status\" -gt 128 ]; then\n\
         \x20   wait \"$shard\"\n\
         \x20   status=$?\n\
         fi\n\
         if [ \"$status\" -eq {EXIT_PREEMPTED} ]; then\n\
         \x20   task=\"${{SLURM_ARRAY_JOB_ID}}_$SLURM_ARRAY_TASK_ID\"\n\
         \x20   echo \"mscope slurm: shard $SLURM_ARRAY_TASK_ID/{n} stopped early; requeueing $task\" >&2\n\
         \x20   # The task by its array name: the last task's $SLURM_JOB_ID is the whole array's id.\n\
         \x20   scontrol requeue \"$task\"\n\
         fi\n\
         exit \"$status\"\n"
    )
}

/// The merge job's script.
fn merge_script(command: &ShardedCommand, n: usize) -> String {
    let merge = [
        shell_quote(&command.program),
        "merge".to_string(),
        shell_quote(&command.out),
    ]
    .join(" ");
    format!(
        "#!/bin/bash\n\
         # Merge of the {n} shards, written by `mscope slurm plan`; runs once all succeeded.\n\
         exec {merge}\n"
    )
}

/// `PROGRAM SUBCOMMAND ARGS…`, every word quoted for the shell.
fn command_line(command: &ShardedCommand) -> String {
    [&command.program, &command.subcommand]
        .into_iter()
        .chain(&command.args)
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as one shell word: bare when it holds only characters the shell leaves alone, else in
/// single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &[&str]) -> Vec<String> {
        line.iter().map(|w| w.to_string()).collect()
    }

    fn options(shards: usize) -> PlanOptions {
        PlanOptions {
            shards,
            partition: None,
            time: None,
            gres: None,
            cpus_per_task: None,
            grace_secs: 120,
            workdir: PathBuf::from("/scratch/me"),
        }
    }

    fn ntk(extra: &[&str]) -> ShardedCommand {
        let mut line = words(&[
            "mscope",
            "ntk",
            "--model",
            "my model.safetensors",
            "--data",
            "d.safetensors",
            "--out",
            "k.safetensors",
        ]);
        line.extend(words(extra));
        ShardedCommand::parse(&line).unwrap()
    }

    /// Runs `script` with bash and returns what it prints, so quoting is checked by the shell
    /// that will read it rather than by eye.
    fn bash_words(script: &str) -> Vec<String> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("printf '%s\\n' {script}"))
            .output()
            .expect("bash runs");
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn quoting_round_trips_through_bash() {
        let hostile = [
            "plain-word_1.safetensors",
            "with space",
            "it's",
            "$HOME",
            "`id`",
            "a;b|c&d",
            "*",
            "",
            "50%",
            "\"dq\"",
            "back\\slash",
        ];
        let line: Vec<String> = hostile.iter().map(|w| shell_quote(w)).collect();
        assert_eq!(bash_words(&line.join(" ")), hostile);
        assert_eq!(shell_quote("k.safetensors"), "k.safetensors");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn parse_finds_out_and_gpu_backends() {
        let cmd = ntk(&[]);
        assert_eq!(cmd.out, "k.safetensors");
        assert_eq!(cmd.gpus, 0);
        assert_eq!(ntk(&["--backend", "cuda"]).gpus, 1);
        assert_eq!(ntk(&["--backend=wgpu"]).gpus, 1);
        assert_eq!(ntk(&["--backend", "cpu"]).gpus, 0);
        // One GPU per distinct device index; none on the CPU whatever --devices says.
        assert_eq!(ntk(&["--backend", "cuda", "--devices", "0,1,1"]).gpus, 2);
        assert_eq!(ntk(&["--backend", "cpu", "--devices=0,1"]).gpus, 0);
        // The last --out wins, as for clap.
        assert_eq!(ntk(&["--out=other.safetensors"]).out, "other.safetensors");
    }

    #[test]
    fn parse_refuses_what_cannot_be_sharded() {
        let refuse = |line: &[&str], needle: &str| {
            let err = ShardedCommand::parse(&words(line)).unwrap_err().to_string();
            assert!(err.contains(needle), "{line:?}: {err}");
        };
        refuse(&["mscope"], "after `--`");
        refuse(
            &["mscope", "pca", "--out", "p.json"],
            "cannot be sharded; commands that take --shard: ntk, embed, compare",
        );
        refuse(&["mscope", "ntk", "--model", "m"], "has no --out");
        refuse(&["mscope", "ntk", "--out"], "--out ends the command");
        refuse(
            &["mscope", "ntk", "--out", "k", "--shard", "0/2"],
            "already has --shard",
        );
        refuse(&["mscope", "ntk", "--out", "a\nb"], "line break");
    }

    #[test]
    fn array_job_runs_each_shard_requeueable_with_a_warning_signal() {
        let plan = Plan::new(ntk(&[]), &options(4)).unwrap();
        assert_eq!(
            plan.shards.options,
            [
                "--job-name=mscope-ntk-shards",
                "--array=0-3",
                "--chdir=/scratch/me",
                "--requeue",
                "--signal=B:TERM@120",
                "--open-mode=append",
                "--output=k.shard-%a-of-4.log",
            ]
        );
        let script = &plan.shards.script;
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(
            script.contains(
                "mscope ntk --model 'my model.safetensors' --data d.safetensors \
                 --out k.safetensors --shard \"$SLURM_ARRAY_TASK_ID/4\" &\n"
            ),
            "{script}"
        );
        assert!(script.contains(&format!("if [ \"$status\" -eq {EXIT_PREEMPTED} ]; then")));
        // By the task's array name: `scontrol requeue $SLURM_JOB_ID` in the array's last task
        // names the whole array (its job id is the array's) and reruns finished tasks too.
        assert!(script.contains("task=\"${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID\"\n"));
        assert!(script.contains("    scontrol requeue \"$task\"\n"));
        assert!(script.ends_with("exit \"$status\"\n"));
    }

    #[test]
    fn resources_follow_the_options_and_the_backend() {
        let mut opts = options(2);
        opts.partition = Some("gpu".into());
        opts.time = Some("2:00:00".into());
        opts.cpus_per_task = Some(8);
        let plan = Plan::new(ntk(&["--backend", "cuda"]), &opts).unwrap();
        for want in [
            "--partition=gpu",
            "--time=2:00:00",
            "--gres=gpu:1",
            "--cpus-per-task=8",
        ] {
            assert!(plan.shards.options.iter().any(|o| o == want), "{want}");
        }
        // The merge reads files only: the partition, no GPU, no time limit of the shards.
        assert!(plan.merge.options.iter().any(|o| o == "--partition=gpu"));
        assert!(!plan.merge.options.iter().any(|o| o.starts_with("--gres")));

        opts.gres = Some("gpu:a100:2".into());
        let plan = Plan::new(ntk(&["--backend", "cpu"]), &opts).unwrap();
        assert!(plan.shards.options.iter().any(|o| o == "--gres=gpu:a100:2"));
        let plan = Plan::new(ntk(&[]), &options(2)).unwrap();
        assert!(!plan.shards.options.iter().any(|o| o.starts_with("--gres")));
        let plan = Plan::new(ntk(&["--backend", "cuda", "--devices", "0,1"]), &options(2)).unwrap();
        assert!(plan.shards.options.iter().any(|o| o == "--gres=gpu:2"));
    }

    #[test]
    fn merge_job_runs_once_every_shard_succeeded() {
        let plan = Plan::new(ntk(&[]), &options(3)).unwrap();
        assert_eq!(
            plan.merge.options,
            [
                "--job-name=mscope-ntk-merge",
                "--chdir=/scratch/me",
                "--kill-on-invalid-dep=yes",
                "--open-mode=append",
                "--output=k.merge.log",
            ]
        );
        assert!(plan
            .merge
            .script
            .ends_with("exec mscope merge k.safetensors\n"));
        let text = plan.render();
        assert!(
            text.contains("    \"--dependency=afterok:$shards\" \\\n"),
            "{text}"
        );
        assert!(text.contains("shards=${shards%%;*}\n"));
    }

    #[test]
    fn paths_with_spaces_and_percent_survive() {
        let line = words(&[
            "/opt/my tools/mscope",
            "ntk",
            "--model",
            "m.safetensors",
            "--data",
            "d.safetensors",
            "--out",
            "runs/100% done/k.safetensors",
        ]);
        let mut opts = options(2);
        opts.workdir = PathBuf::from("/scratch/my project");
        let plan = Plan::new(ShardedCommand::parse(&line).unwrap(), &opts).unwrap();
        assert!(plan
            .shards
            .options
            .contains(&"--output=runs/100%% done/k.shard-%a-of-2.log".to_string()));
        assert!(plan
            .merge
            .script
            .contains("exec '/opt/my tools/mscope' merge 'runs/100% done/k.safetensors'\n"));
        let text = plan.render();
        assert!(
            text.contains("    '--chdir=/scratch/my project' \\\n"),
            "{text}"
        );
        // The rendered command line reads back as the words given.
        let run = text
            .lines()
            .find(|l| l.ends_with(" &"))
            .unwrap()
            .trim_end_matches(" &")
            .replace("\"$SLURM_ARRAY_TASK_ID/2\"", "1/2");
        let mut want = line.clone();
        want.extend(words(&["--shard", "1/2"]));
        assert_eq!(bash_words(&run), want);
    }

    #[test]
    fn rendered_plan_is_valid_bash() {
        let text = Plan::new(ntk(&[]), &options(2)).unwrap().render();
        let status = Command::new("bash")
            .arg("-n")
            .arg("-c")
            .arg(&text)
            .status()
            .expect("bash runs");
        assert!(status.success(), "{text}");
    }

    #[test]
    fn job_ids_from_parsable_answers() {
        assert_eq!(parse_job_id("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("1234;cluster\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("Submitted batch job 12"), None);
        assert_eq!(parse_job_id(""), None);
        let err = Plan::new(ntk(&[]), &options(0)).unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
    }
}
