//! `mscope slurm plan` on a real Slurm cluster (CI starts a one-node one with
//! `tools/slurm/local-cluster.sh`): an array of `ntk` shards and the dependent merge give the
//! single-process kernel byte for byte, also when a shard is requeued in the middle of its tiles;
//! and the `tools/slurm` templates say what `plan` prints. Where `sinfo` is absent or shows no
//! idle node, the cluster test reports itself skipped (`MSCOPE_REQUIRE_SLURM=1` makes that a
//! failure, as CI sets it once its cluster is up).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{absent, repo_path, run_mscope_ok};
use mscope::io::checkpoint::Checkpoint;
use mscope::io::shards::Shard;

/// How long the jobs of one submission may take before the test fails (they need seconds).
const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// Output of a Slurm client command, or `None` when it cannot run or fails.
fn slurm(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why no job can run here (no Slurm clients, no idle node), or `None` when one can.
fn cluster_missing() -> Option<String> {
    for client in ["sinfo", "sbatch", "scontrol"] {
        if slurm("which", &[client]).is_none() {
            return Some(format!("no `{client}` on PATH"));
        }
    }
    match slurm(
        "sinfo",
        &["--noheader", "--states=idle,mixed", "--format=%n"],
    ) {
        None => Some("`sinfo` fails: no controller answers".to_string()),
        Some(nodes) if nodes.trim().is_empty() => Some("`sinfo` shows no idle node".to_string()),
        Some(_) => None,
    }
}

/// `scontrol show job ID` as `Key=Value` fields (one job: an array task is named `ARRAY_TASK`).
fn job_field(id: &str, key: &str) -> Option<String> {
    let text = slurm("scontrol", &["show", "job", "--oneliner", id])?;
    let prefix = format!("{key}=");
    text.split_whitespace()
        .find_map(|field| field.strip_prefix(&prefix))
        .map(str::to_string)
}

/// `OUT`'s logs beside it (plan's `--output` names: `k.shard-I-of-N.log`, `k.merge.log`), for
/// failure messages.
fn logs(out: &Path) -> String {
    let dir = out.parent().unwrap();
    let stem = format!("{}.", out.file_stem().unwrap().to_str().unwrap());
    let mut text = String::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&stem) && n.ends_with(".log"))
        .collect();
    names.sort();
    for name in names {
        let log = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        text += &format!("--- {name}\n{log}");
    }
    text
}

/// Waits until job `id` has ended and returns its final state (`COMPLETED`, `FAILED`,
/// `CANCELLED`, …), failing with the logs of `out` after [`JOB_TIMEOUT`].
fn wait_ended(id: &str, out: &Path) -> String {
    let start = Instant::now();
    loop {
        let state = job_field(id, "JobState").unwrap_or_else(|| "UNKNOWN".into());
        if !matches!(
            state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "REQUEUED"
        ) {
            return state;
        }
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "job {id} still {state} after {JOB_TIMEOUT:?}:\n{}",
            logs(out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until job `id` has ended and asserts it completed (exit 0).
fn wait_completed(id: &str, out: &Path) {
    let state = wait_ended(id, out);
    assert_eq!(state, "COMPLETED", "job {id} ended {state}:\n{}", logs(out));
}

/// Jobs this test submitted, cancelled when it ends (a failed test leaves nothing queued; a
/// finished job ignores the cancel).
struct Submitted(Vec<String>);

impl Drop for Submitted {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("scancel").args(&self.0).status();
        }
    }
}

/// `mscope slurm plan --submit` of `shards` shards of `ntk_args` (which hold `--out out`);
/// returns the array's and the merge's job ids, recorded in `jobs`.
fn submit(jobs: &mut Submitted, shards: usize, ntk_args: &[&str]) -> (String, String) {
    let count = shards.to_string();
    let mut args = vec!["slurm", "plan", "--shards", &count, "--submit", "--"];
    args.push(env!("CARGO_BIN_EXE_mscope"));
    args.push("ntk");
    args.extend(ntk_args);
    let out = run_mscope_ok(&args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    // "shards: job A, merge: job B"
    let ids: Vec<String> = stdout
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 2, "two job ids in {stdout:?}");
    jobs.0.extend(ids.iter().cloned());
    (ids[0].clone(), ids[1].clone())
}

/// A kernel job large enough that a shard takes seconds over dozens of tiles: a 5-1024-1024-3
/// MLP (one seeded epoch on 400 blob points) and exact trNTK over 4 000 others on the CPU with
/// one thread and 32-row tiles (thread count and tile rows fix the bits of every shard and of
/// the single run).
struct KernelCase {
    dir: tempfile::TempDir,
    model: PathBuf,
    data: PathBuf,
}

impl KernelCase {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A space in every path the batch scripts name: the plan quotes them.
        let work = dir.path().join("slurm run");
        std::fs::create_dir(&work).unwrap();
        let blobs = |n: &str, seed: &str, out: &Path| {
            run_mscope_ok(&[
                "data",
                "blobs",
                "--n",
                n,
                "--dim",
                "5",
                "--classes",
                "3",
                "--seed",
                seed,
                "--test-fraction",
                "0",
                "--out",
                out.to_str().unwrap(),
            ]);
        };
        let (train, data) = (
            work.join("train.safetensors"),
            work.join("data.safetensors"),
        );
        blobs("400", "1", &train);
        blobs("4000", "2", &data);
        let mlp_dir = work.join("mlp");
        run_mscope_ok(&[
            "train",
            "--data",
            train.to_str().unwrap(),
            "--hidden",
            "1024,1024",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--out",
            mlp_dir.to_str().unwrap(),
        ]);
        KernelCase {
            model: mlp_dir.join("model-seed0.safetensors"),
            data,
            dir,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("slurm run").join(name)
    }

    /// `ntk` arguments writing `out`.
    fn args<'a>(&'a self, out: &'a Path) -> Vec<&'a str> {
        vec![
            "--model",
            self.model.to_str().unwrap(),
            "--data",
            self.data.to_str().unwrap(),
            "--backend",
            "cpu",
            "--threads",
            "1",
            "--tile-rows",
            "32",
            "--out",
            out.to_str().unwrap(),
        ]
    }
}

/// Shard `i` of `n` of output `out` (`k.safetensors` → `k.shard-I-of-N.safetensors`).
fn shard_path(out: &Path, i: usize, n: usize) -> PathBuf {
    Shard { index: i, count: n }.path(out)
}

/// Finished tiles in shard `i` of `n`'s checkpoint (beside the shard file).
fn finished_tiles(out: &Path, i: usize, n: usize) -> usize {
    std::fs::read_dir(Checkpoint::dir_for(&shard_path(out, i, n))).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != "manifest.json")
            .count()
    })
}

/// The cluster scenarios in one test, so their jobs never share the node's CPUs with each
/// other: a plain sharded run, one whose shard is requeued (SIGTERM, then a rerun that resumes
/// from its finished tiles) mid-way, and one whose shards fail.
#[test]
fn sharded_ntk_on_slurm_merges_to_the_single_process_kernel() {
    if let Some(why) = cluster_missing() {
        absent(
            "slurm",
            "sharded_ntk_on_slurm_merges_to_the_single_process_kernel",
            &why,
        );
        return;
    }
    let case = KernelCase::new();
    // Declared after `case`, so dropped first: jobs are cancelled before their files go.
    let mut jobs = Submitted(Vec::new());
    let single = case.out("single.safetensors");
    run_mscope_ok(
        &["ntk"]
            .into_iter()
            .chain(case.args(&single))
            .collect::<Vec<_>>(),
    );
    let want = std::fs::read(&single).unwrap();

    // Three shards, every one run once, then the merge.
    let merged = case.out("merged.safetensors");
    let (_, merge) = submit(&mut jobs, 3, &case.args(&merged));
    wait_completed(&merge, &merged);
    assert!(
        std::fs::read(&merged).unwrap() == want,
        "the merged kernel differs from the single-process one:\n{}",
        logs(&merged)
    );

    // Two shards; shard 0 is requeued once it has saved a tile and before it has finished.
    let requeued = case.out("requeued.safetensors");
    let (shards, merge) = submit(&mut jobs, 2, &case.args(&requeued));
    let task = format!("{shards}_0");
    let shard0 = shard_path(&requeued, 0, 2);
    let start = Instant::now();
    while finished_tiles(&requeued, 0, 2) == 0 {
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "shard 0 saved no tile in {JOB_TIMEOUT:?}:\n{}",
            logs(&requeued)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    slurm("scontrol", &["requeue", &task]).expect("scontrol requeue of a running shard");
    let tiles_at_requeue = finished_tiles(&requeued, 0, 2);
    assert!(
        !shard0.exists() && tiles_at_requeue > 0,
        "the requeue did not land mid-shard ({tiles_at_requeue} tiles saved, shard file {}):\n{}",
        if shard0.exists() { "written" } else { "absent" },
        logs(&requeued)
    );
    // Slurm holds a requeued job back for two minutes (its begin time); start it now instead,
    // once it is pending again (it may first be completing while the shard saves its tile).
    let start = Instant::now();
    loop {
        let state = job_field(&task, "JobState").unwrap_or_default();
        match state.as_str() {
            "PENDING" => {
                // Refused in a race with the scheduler; the loop tries again.
                let _ = slurm(
                    "scontrol",
                    &["update", &format!("jobid={task}"), "StartTime=now"],
                );
            }
            "COMPLETING" | "REQUEUED" | "CONFIGURING" => {}
            _ => break,
        }
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "the requeued shard {task} is still {state} after {JOB_TIMEOUT:?}:\n{}",
            logs(&requeued)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        job_field(&task, "Restarts").as_deref(),
        Some("1"),
        "shard {task} ran again after its requeue"
    );
    wait_completed(&merge, &requeued);
    let log = logs(&requeued);
    assert!(
        std::fs::read(&requeued).unwrap() == want,
        "the merged kernel after a requeue differs from the single-process one:\n{log}"
    );
    // The rerun took the tiles saved before the requeue instead of computing them again.
    assert!(
        log.contains("resumed from the checkpoint"),
        "shard 0's rerun resumed no tile:\n{log}"
    );

    // Shards that fail (no such model) are not requeued, and the merge is cancelled rather
    // than left waiting on a dependency that can never be met.
    let failed = case.out("failed.safetensors");
    let mut args = case.args(&failed);
    args[1] = "missing-model.safetensors";
    let (shards, merge) = submit(&mut jobs, 2, &args);
    assert_eq!(
        wait_ended(&merge, &failed),
        "CANCELLED",
        "{}",
        logs(&failed)
    );
    assert_eq!(
        job_field(&format!("{shards}_0"), "JobState").as_deref(),
        Some("FAILED")
    );
    assert!(!failed.exists());
}

/// The option lines of `sbatch` calls in plan's script (`    --name=value \`), and the `#SBATCH`
/// lines of a template, as `--name=value`.
fn plan_options(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|l| l.strip_prefix("    --").or(l.strip_prefix("    \"--")))
        .map(|l| {
            let option = l.split(" <<").next().unwrap().trim_end_matches(" \\");
            format!("--{}", option.trim_end_matches('"'))
        })
        .collect()
}

fn template_options(template: &str) -> Vec<String> {
    template
        .lines()
        .filter_map(|l| l.strip_prefix("#SBATCH "))
        .map(str::to_string)
        .collect()
}

/// `mscope slurm plan --shards 8 --time 4:00:00 -- mscope SUBCOMMAND ARGS` as printed.
fn printed_plan(subcommand: &str, args: &[&str]) -> String {
    let mut line = vec![
        "slurm", "plan", "--shards", "8", "--time", "4:00:00", "--", "mscope", subcommand,
    ];
    line.extend(args);
    String::from_utf8(run_mscope_ok(&line).stdout).unwrap()
}

/// Asserts the template `name` says what `plan` printed: its `#SBATCH` options are among the
/// plan's, and its shard script from the trap to the end, the command aside, is the same text
/// once the template's settings ($N) are filled in.
fn assert_template_matches(name: &str, plan: &str) {
    let template = std::fs::read_to_string(repo_path(&format!("tools/slurm/{name}"))).unwrap();
    let options = plan_options(plan);
    for option in template_options(&template) {
        assert!(
            options.contains(&option),
            "{name}: option {option} is not in plan's {options:?}"
        );
    }
    if !template.contains("$SLURM_ARRAY_TASK_ID") {
        return; // the merge template: no shard script
    }
    let body = |script: &str| -> Vec<String> {
        script
            .lines()
            .skip_while(|l| !l.starts_with("trap "))
            .filter(|l| !l.starts_with("mscope ") && !l.starts_with("    --out"))
            .map(|l| l.replace("$N", "8"))
            .collect()
    };
    let planned = plan
        .split("<<'MSCOPE_SHARDS_SCRIPT'\n")
        .nth(1)
        .and_then(|rest| rest.split("MSCOPE_SHARDS_SCRIPT\n").next())
        .expect("the shard script in the plan");
    assert_eq!(body(&template), body(planned), "{name}");
}

#[test]
fn templates_say_what_plan_prints() {
    let ntk = printed_plan(
        "ntk",
        &[
            "--model",
            "mlp.safetensors",
            "--data",
            "train.safetensors",
            "--backend",
            "cuda",
            "--out",
            "kernel.safetensors",
        ],
    );
    assert_template_matches("ntk-shards.sbatch", &ntk);
    assert_template_matches("merge.sbatch", &ntk);
    let merge = std::fs::read_to_string(repo_path("tools/slurm/merge.sbatch")).unwrap();
    assert!(merge.contains("#SBATCH --kill-on-invalid-dep=yes\n"));
    assert!(
        merge.contains("OUT=kernel.safetensors ") && merge.contains("exec mscope merge \"$OUT\"\n")
    );
    assert!(ntk.contains("exec mscope merge kernel.safetensors\n"));

    let embed = printed_plan(
        "embed",
        &[
            "--model",
            "all-MiniLM-L6-v2",
            "--input",
            "texts.jsonl",
            "--backend",
            "cuda",
            "--out",
            "emb.safetensors",
        ],
    );
    assert_template_matches("embed-shards.sbatch", &embed);
}
