//! How the release binary writes its outputs: SIGINT and SIGTERM during a write leave no
//! temporary or lock file and end the process by that signal; temporary files of dead
//! processes are swept; a second run on one output fails at once naming the first one's PID;
//! every command that writes a file writes the same bytes when run twice; and every command
//! that prints ends quietly, leaving nothing behind, when its standard output's reader is gone.
//!
//! Writes are caught in flight with `MSCOPE_TEST_HOLD_WRITE_MS`, which makes each write wait
//! between filling its temporary file and renaming it.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{minilm_dir, repo_path, run_mscope, run_mscope_ok};
use mscope::io::embeddings::EmbeddingsFile;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file name in `dir`, hidden ones included, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts `mscope args` with every write held `hold_ms` milliseconds before its rename.
fn spawn_holding(args: &[&str], hold_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mscope"))
        .args(args)
        .env("MSCOPE_TEST_HOLD_WRITE_MS", hold_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until a temporary file (`.NAME.tmp-PID-N`) of `child` is in `dir`: a write in flight.
fn wait_for_a_write(child: &mut Child, dir: &Path) -> String {
    let tag = format!(".tmp-{}-", child.id());
    let start = Instant::now();
    loop {
        if let Some(name) = names_in(dir).into_iter().find(|n| n.contains(&tag)) {
            return name;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it wrote anything");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no write began");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(signal: &str, child: &Child) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

fn moons_args(dir: &Path) -> Vec<String> {
    let out = dir.join("train.safetensors");
    let test = dir.join("test.safetensors");
    ["data", "--out", s(&out), "--test-out", s(&test), "moons"]
        .iter()
        .map(|a| a.to_string())
        .collect()
}

#[test]
fn sigint_and_sigterm_mid_write_leave_nothing_and_end_by_the_signal() {
    for (signal, number) in [("-INT", 2), ("-TERM", 15)] {
        let dir = tempfile::tempdir().unwrap();
        let args = moons_args(dir.path());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_holding(&args, 30_000);
        let temp = wait_for_a_write(&mut child, dir.path());
        assert!(
            names_in(dir.path()).contains(&".train.safetensors.lock".to_string()),
            "the run holds a lock on its output"
        );
        send(signal, &child);
        let ended = child.wait_with_output().unwrap();
        // Ended by the signal itself, as a shell sees it: 128 + signal (130, 143).
        assert_eq!(
            ended.status.signal(),
            Some(number),
            "{signal}: {:?} {}",
            ended.status,
            String::from_utf8_lossy(&ended.stderr)
        );
        let left = names_in(dir.path());
        assert!(
            left.is_empty(),
            "{signal} during the write of {temp} left {left:?}"
        );
        let shell = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "MSCOPE_TEST_HOLD_WRITE_MS=30000 \"$0\" \"$@\" & pid=$!; \
                 while ! ls -a {dir} | grep -q tmp-; do sleep 0.01; done; \
                 kill {signal} $pid; wait $pid; echo $?",
                dir = s(dir.path())
            ))
            .arg(env!("CARGO_BIN_EXE_mscope"))
            .args(&args)
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&shell.stdout);
        assert_eq!(status.trim(), (128 + number).to_string(), "{signal}");
        assert!(names_in(dir.path()).is_empty());
    }
}

#[test]
fn a_second_run_on_one_output_fails_at_once_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let args = moons_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = spawn_holding(&args, 3_000);
    wait_for_a_write(&mut first, dir.path());
    let start = Instant::now();
    // Another spelling of the same output is the same output.
    let same = format!("{}/./train.safetensors", s(dir.path()));
    let second = run_mscope(&["data", "--out", &same, "--test-fraction", "0", "moons"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("another mscope run (PID {})", first.id()))
            && stderr.contains("train.safetensors"),
        "{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(2), "it waited");
    let done = first.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        names_in(dir.path()),
        ["test.safetensors", "train.safetensors"],
        "the lock files are removed at the end"
    );
    // With the first run gone (its lock file left behind, as SIGKILL would), the output is free.
    std::fs::write(dir.path().join(".train.safetensors.lock"), "1").unwrap();
    run_mscope_ok(&args);
    assert_eq!(
        names_in(dir.path()),
        ["test.safetensors", "train.safetensors"]
    );
}

#[test]
fn temporary_files_of_dead_processes_are_swept_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    // A PID that is gone: a child that has exited and been waited for.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = format!(".train.safetensors.tmp-{}-0", gone.id());
    let live = format!(".train.safetensors.tmp-{}-0", std::process::id());
    let other = format!(".other.safetensors.tmp-{}-0", gone.id());
    for name in [&dead, &live, &other] {
        std::fs::write(dir.path().join(name), "half a file").unwrap();
    }
    let args = moons_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_mscope_ok(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&dead) && stderr.contains("no longer running"),
        "{stderr}"
    );
    let left = names_in(dir.path());
    assert!(!left.contains(&dead), "{left:?}");
    // A live process's write is kept, and so are other outputs' temporary files.
    assert!(left.contains(&live) && left.contains(&other), "{left:?}");

    // A SIGKILLed write leaves its temporary file; the next run on the output removes it.
    let dir = tempfile::tempdir().unwrap();
    let args = moons_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = spawn_holding(&args, 30_000);
    let temp = wait_for_a_write(&mut child, dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(names_in(dir.path()).contains(&temp));
    let out = run_mscope_ok(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&temp));
    assert_eq!(
        names_in(dir.path()),
        ["test.safetensors", "train.safetensors"]
    );
}

/// Forty rows in two labels, written as `mscope embed` writes them: input of the analyses.
fn write_embeddings(path: &Path, rotate: bool) {
    let (rows, dim) = (40, 6);
    let mut embeddings = Vec::with_capacity(rows * dim);
    for r in 0..rows {
        for c in 0..dim {
            let x = ((r * 7 + c * 13) % 17) as f32 / 17.0 + if r >= 20 { 0.8 } else { 0.0 };
            embeddings.push(if rotate { x * 0.5 + c as f32 * 0.1 } else { x });
        }
    }
    EmbeddingsFile {
        embeddings,
        dim,
        labels: (0..rows as i64).map(|r| i64::from(r >= 20)).collect(),
        label_names: vec!["low".into(), "high".into()],
        model: "fixture".into(),
        pooling: "mean".into(),
        normalized: false,
        max_length: 0,
    }
    .write(path)
    .unwrap();
}

/// What a command's standard output is connected to.
#[derive(Clone, Copy, PartialEq)]
enum Stdout {
    /// Read whole; `slurm plan`'s is kept as the file `plan.sh` (its output is a script).
    Read,
    /// A pipe whose reader is closed before the command writes (`mscope … | head -c0`).
    ClosedPipe,
}

/// `slurm plan` runs in one fixed directory whatever `dir` is: the plan records the directory
/// it was made in (`--chdir`), and the two runs compared must make the same plan.
fn slurm_plan_dir() -> PathBuf {
    repo_path("tests/fixtures")
}

/// `args` run as a command line of `line`, `@` marking the names relative to the run's folder.
fn cmd(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|w| w.strip_prefix('@').unwrap_or(w).to_string())
        .collect()
}

/// Every command that writes a file (or, for `slurm plan`, prints one), on small inputs, in
/// order: later ones read what earlier ones wrote. Run inside the folder with relative names:
/// reports record their inputs' paths as given.
fn command_lines() -> Vec<Vec<String>> {
    let fixture = |name: &str| s(&repo_path(&format!("tests/fixtures/{name}"))).to_string();
    let (texts, minilm) = (fixture("texts.jsonl"), s(&minilm_dir()).to_string());
    let lines = [
        "data --out @train.safetensors --test-out @test.safetensors --plot @moons.png moons --n 200"
            .to_string(),
        "train --data @train.safetensors --test-data @test.safetensors --out @ens --hidden 8 \
         --epochs 2 --seeds 0,1"
            .into(),
        format!(
            "train --model {} --data {texts} --out @tuned --epochs 1 --batch-size 2 --threads 1",
            fixture("classifiers/tiny-bert-encoder"),
            texts = fixture("classifiers/texts.jsonl")
        ),
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors --out @k.safetensors \
         --backend cpu --threads 1"
            .into(),
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors --kind trntk0 \
         --out @k0.safetensors --backend cpu --threads 1"
            .into(),
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors \
         --against @train.safetensors --out @kst.safetensors --backend cpu --threads 1"
            .into(),
        "ntk --model @ens/model-seed0.safetensors --data @train.safetensors \
         --out @ktt.safetensors --backend cpu --threads 1"
            .into(),
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors \
         --out @ks.safetensors --backend cpu --threads 1 --tile-rows 16 --shard 0/2"
            .into(),
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors \
         --out @ks.safetensors --backend cpu --threads 1 --tile-rows 16 --shard 1/2"
            .into(),
        "merge @ks.safetensors".into(),
        "kglm --train-kernel @ktt.safetensors --train-labels @train.safetensors \
         --test-kernel @kst.safetensors --test-labels @test.safetensors --out @kglm.json \
         --model @ens/model-seed0.safetensors --test-data @test.safetensors \
         --plot @kglm.png --threads 1"
            .into(),
        "ntk-compare @k.safetensors @k0.safetensors --json @ntkc.json --plot @ntkc.png \
         --threads 1"
            .into(),
        "compare --scores @ens/scores.safetensors --out @compare.json \
         --plot @compare.png --backend cpu --threads 1"
            .into(),
        "alpha --candidate @candidate.txt --reference @reference.txt --plot @alpha.png \
         --backend cpu"
            .into(),
        "pca --input @a.safetensors --out @pca.json --plot @pca.png --backend cpu --threads 1"
            .into(),
        "lda --input @a.safetensors --out @lda.json --save @det.safetensors --plot @lda.png \
         --backend cpu --threads 1"
            .into(),
        "classify --detector @det.safetensors --input @b.safetensors --out @classify.json".into(),
        "cluster --input @a.safetensors --k 2 --json @cluster.json --plot @cluster.png \
         --threads 1"
            .into(),
        "align @a.safetensors @b.safetensors --cca-dims 4 --json @align.json --plot @align.png \
         --aligned @aligned.safetensors --threads 1"
            .into(),
        format!(
            "embed --model {minilm} --input {texts} --out @e.safetensors --backend cpu --threads 1"
        ),
        format!(
            "embed --model {minilm} --input {texts} --out @es.safetensors --backend cpu \
             --threads 1 --batch-size 4 --shard 0/2"
        ),
        format!(
            "embed --model {minilm} --input {texts} --out @es.safetensors --backend cpu \
             --threads 1 --batch-size 4 --shard 1/2"
        ),
        "merge @es.safetensors".into(),
        format!(
            "embed --model {} --images {} --out @images.safetensors --backend cpu --threads 1",
            fixture("clip/open_clip-tiny"),
            fixture("clip/photos")
        ),
        "pca --input @images.safetensors --components 2 --explain 2 --contact-sheet @sheet.png \
         --backend cpu --threads 1"
            .into(),
        format!(
            "embed --model {} --input {texts} --out @decoder.safetensors --backend cpu \
             --threads 1",
            fixture("tiny-mistral")
        ),
        format!(
            "embed --model {} --input {texts} --out @gguf.safetensors --backend cpu --threads 1",
            fixture("gguf/tiny-llama-spm.gguf")
        ),
        "slurm plan --shards 4 --time 1:00:00 -- mscope ntk --model mlp.safetensors \
         --data train.safetensors --backend cpu --threads 1 --out kernel.safetensors"
            .into(),
    ];
    lines.iter().map(|line| cmd(line)).collect()
}

/// Runs `mscope args` in `dir` (`slurm plan` in [`slurm_plan_dir`]) with its standard output
/// connected as `stdout` says, and asserts how it ended: success, or with its reader gone, by
/// SIGPIPE without a panic.
fn run_in(dir: &Path, args: &[String], stdout: Stdout) {
    let plan = args[0] == "slurm";
    let mut child = Command::new(env!("CARGO_BIN_EXE_mscope"))
        .args(args)
        .current_dir(if plan {
            slurm_plan_dir()
        } else {
            dir.to_path_buf()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if stdout == Stdout::ClosedPipe {
        drop(child.stdout.take());
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stdout {
        Stdout::Read => {
            assert!(out.status.success(), "mscope {args:?} failed: {stderr}");
            if plan {
                std::fs::write(dir.join("plan.sh"), &out.stdout).unwrap();
            }
        }
        Stdout::ClosedPipe => {
            // Ended by SIGPIPE, as `yes | head -c0` ends `yes`: silently, 141 in a shell.
            assert_eq!(
                out.status.signal(),
                Some(13),
                "mscope {args:?} with its stdout closed: {:?} {stderr}",
                out.status
            );
            // Progress lines (`bench`) may come first; no complaint about the pipe.
            for complaint in ["panicked", "error", "Broken pipe"] {
                assert!(!stderr.contains(complaint), "mscope {args:?}: {stderr}");
            }
        }
    }
}

/// Runs every command of [`command_lines`] in `dir` on its inputs; returns the files in `dir`
/// afterwards, hidden ones included, as relative paths.
fn write_everything(dir: &Path, stdout: Stdout) -> Vec<PathBuf> {
    let p = |name: &str| dir.join(name);
    write_embeddings(&p("a.safetensors"), false);
    write_embeddings(&p("b.safetensors"), true);
    let sample = |shift: f64| -> String {
        (0..200)
            .map(|i| format!("{}\n", (i as f64 * 0.37).sin() + shift))
            .collect()
    };
    std::fs::write(p("candidate.txt"), sample(0.2)).unwrap();
    std::fs::write(p("reference.txt"), sample(0.0)).unwrap();
    for args in command_lines() {
        run_in(dir, &args, stdout);
    }
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Every command that writes a file writes the same bytes in a second run, `slurm plan`'s
/// printed script included. `bench` is left out: it measures time, and its reports and plots
/// carry the timings, which no two runs share.
#[test]
fn every_command_writes_the_same_bytes_twice() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = write_everything(a.path(), Stdout::Read);
    assert_eq!(write_everything(b.path(), Stdout::Read), files);
    // Each command's outputs are there (a missing one would pass the comparison unnoticed).
    for name in [
        "moons.png",
        "ens/scores.safetensors",
        "ens/model-seed1.safetensors",
        "k.safetensors",
        "ks.safetensors",
        "kglm.json",
        "ntkc.png",
        "compare.json",
        "pca.png",
        "det.safetensors",
        "classify.json",
        "cluster.json",
        "align.png",
        "aligned.safetensors",
        "e.safetensors",
        "e.safetensors.texts.jsonl",
        "es.safetensors.texts.jsonl",
        "tuned/model.safetensors",
        "tuned/train.json",
        "alpha.png",
        "images.safetensors",
        "images.safetensors.texts.jsonl",
        "decoder.safetensors",
        "gguf.safetensors",
        "plan.sh",
        "sheet.png",
    ] {
        assert!(files.contains(&PathBuf::from(name)), "{name} not written");
    }
    let differing: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read(a.path().join(f)).unwrap() != std::fs::read(b.path().join(f)).unwrap()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        differing.is_empty(),
        "differ between two runs: {differing:?}"
    );
}

/// Every command that prints to standard output, its reader gone before it writes (`mscope …
/// | head -c0`), ends quietly by SIGPIPE as coreutils do, after finishing its files: no panic,
/// no error message, no temporary or lock file left, every output in place.
#[test]
fn every_command_ends_quietly_when_its_stdout_reader_has_gone() {
    let (closed, read) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = write_everything(closed.path(), Stdout::ClosedPipe);
    let leftovers: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            name.contains(".tmp-") || name.ends_with(".lock")
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let mut expected = write_everything(read.path(), Stdout::Read);
    expected.retain(|f| f != Path::new("plan.sh"));
    assert_eq!(files, expected, "the same files as with stdout read");
    // Those that write no file: `devices`, `bench` (its tables on stdout).
    for line in [
        "devices",
        "bench --quick --repeat 1 --warmup 0 --suite kernels --filter minilm",
    ] {
        run_in(closed.path(), &cmd(line), Stdout::ClosedPipe);
    }
}
