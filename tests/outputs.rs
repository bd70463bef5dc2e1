//! How the release binary writes its outputs: SIGINT and SIGTERM during a write leave no
//! temporary or lock file and end the process by that signal; temporary files of dead
//! processes are swept; a second run on one output fails at once naming the first one's PID;
//! and every command that writes a file writes the same bytes when run twice.
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

/// Runs every command that writes a file, on small inputs, in `dir`; returns the files written.
fn write_everything(dir: &Path) -> Vec<PathBuf> {
    let p = |name: &str| dir.join(name);
    // Run inside `dir` with relative names: reports record their inputs' paths as given.
    let run = |args: &[String]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mscope"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mscope {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let cmd = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .map(|w| w.strip_prefix('@').unwrap_or(w).to_string())
            .collect()
    };
    write_embeddings(&p("a.safetensors"), false);
    write_embeddings(&p("b.safetensors"), true);
    let texts = s(&repo_path("tests/fixtures/texts.jsonl")).to_string();
    let minilm = s(&minilm_dir()).to_string();
    let lines = [
        "data --out @train.safetensors --test-out @test.safetensors --plot @moons.png moons --n 200",
        "train --data @train.safetensors --test-data @test.safetensors --out @ens --hidden 8 \
         --epochs 2 --seeds 0,1",
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors --out @k.safetensors \
         --backend cpu --threads 1",
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors --kind trntk0 \
         --out @k0.safetensors --backend cpu --threads 1",
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors \
         --against @train.safetensors --out @kst.safetensors --backend cpu --threads 1",
        "ntk --model @ens/model-seed0.safetensors --data @train.safetensors \
         --out @ktt.safetensors --backend cpu --threads 1",
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors \
         --out @ks.safetensors --backend cpu --threads 1 --tile-rows 16 --shard 0/2",
        "ntk --model @ens/model-seed0.safetensors --data @test.safetensors \
         --out @ks.safetensors --backend cpu --threads 1 --tile-rows 16 --shard 1/2",
        "merge @ks.safetensors",
        "kglm --train-kernel @ktt.safetensors --train-labels @train.safetensors \
         --test-kernel @kst.safetensors --test-labels @test.safetensors --out @kglm.json \
         --model @ens/model-seed0.safetensors --test-data @test.safetensors \
         --plot @kglm.png --threads 1",
        "ntk-compare @k.safetensors @k0.safetensors --json @ntkc.json --plot @ntkc.png \
         --threads 1",
        "compare --scores @ens/scores.safetensors --out @compare.json \
         --plot @compare.png --backend cpu --threads 1",
        "pca --input @a.safetensors --out @pca.json --plot @pca.png --backend cpu --threads 1",
        "lda --input @a.safetensors --out @lda.json --save @det.safetensors --plot @lda.png \
         --backend cpu --threads 1",
        "classify --detector @det.safetensors --input @b.safetensors --out @classify.json",
        "cluster --input @a.safetensors --k 2 --json @cluster.json --plot @cluster.png \
         --threads 1",
        "align @a.safetensors @b.safetensors --cca-dims 4 --json @align.json --plot @align.png \
         --aligned @aligned.safetensors --threads 1",
    ];
    for line in lines {
        run(&cmd(line));
    }
    let embed = format!(
        "embed --model {minilm} --input {texts} --out @e.safetensors --backend cpu --threads 1"
    );
    run(&cmd(&embed));
    for shard in ["0/2", "1/2"] {
        run(&cmd(&format!(
            "embed --model {minilm} --input {texts} --out @es.safetensors --backend cpu \
             --threads 1 --batch-size 4 --shard {shard}"
        )));
    }
    run(&cmd("merge @es.safetensors"));
    let clip = s(&repo_path("tests/fixtures/clip/open_clip-tiny")).to_string();
    let photos = s(&repo_path("tests/fixtures/clip/photos")).to_string();
    run(&cmd(&format!(
        "embed --model {clip} --images {photos} --out @img.safetensors --backend cpu --threads 1"
    )));
    run(&cmd(
        "pca --input @img.safetensors --components 2 --explain 2 --contact-sheet @sheet.png \
         --backend cpu --threads 1",
    ));
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

#[test]
fn every_command_writes_the_same_bytes_twice() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = write_everything(a.path());
    assert_eq!(write_everything(b.path()), files);
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
        "img.safetensors",
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
