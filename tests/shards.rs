//! Shards without Slurm, through the `mscope` binary: `--shard I/N` runs in any order, then
//! `mscope merge`, give byte for byte the file one process writes (and that file matches
//! torch.func's kernel); a shard killed with SIGKILL resumes from its finished tiles; SIGTERM
//! stops a run with exit status 75 and the rerun completes to the same bytes; the merge refuses,
//! naming the files, shards that are missing, truncated, damaged (data that no longer match
//! their manifest's digest), duplicated or of another run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{reference_tensor, rel_error_f64, repo_path, run_mscope, run_mscope_ok};
use mscope::backend::Activation;
use mscope::data::Dataset;
use mscope::io::checkpoint::Checkpoint;
use mscope::io::kernel_file::KernelFile;
use mscope::io::preemption::EXIT_PREEMPTED;
use mscope::models::mlp::Mlp;

fn fixture(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/ntk/{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `mscope ntk` on the fixtures with `extra` arguments, every run on one thread count (the
/// kernel's bits may depend on it; the merge checks it).
fn ntk_args<'a>(data: &'a Path, against: Option<&'a Path>, out: &'a Path) -> Vec<String> {
    let mut args = vec![
        "ntk".to_string(),
        "--model".into(),
        s(&fixture("mlp_tanh.safetensors")).into(),
        "--data".into(),
        s(data).into(),
        "--out".into(),
        s(out).into(),
        "--threads".into(),
        "2".into(),
        "--backend".into(),
        "cpu".into(),
    ];
    if let Some(against) = against {
        args.extend(["--against".into(), s(against).into()]);
    }
    args
}

fn ok(args: &[String], extra: &[&str]) -> String {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    String::from_utf8_lossy(&run_mscope_ok(&all).stdout).into_owned()
}

fn merge(out: &Path) -> std::process::Output {
    run_mscope(&["merge", s(out)])
}

/// Shard indices in a scrambled but deterministic order.
fn scrambled(count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| (i * 7 + 3) % count.max(1));
    order.reverse();
    order
}

#[test]
fn shards_in_any_order_merge_to_the_single_process_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (fixture("train.safetensors"), fixture("test.safetensors"));
    for (against, kind, reference) in [
        (None, "trntk", "trntk"),
        (None, "trntk0", "trntk0"),
        (Some(train.as_path()), "trntk", "trntk_test"),
        (Some(train.as_path()), "pntk", "pntk_test"),
    ] {
        let data = if against.is_some() { &test } else { &train };
        let single = dir.path().join("single.safetensors");
        for tile_rows in ["1", "3", "5"] {
            let args = ntk_args(data, against, &single);
            ok(&args, &["--kind", kind, "--tile-rows", tile_rows]);
            let one = std::fs::read(&single).unwrap();
            // What users trust: the kernel is torch.func's.
            let k = KernelFile::read(&single).unwrap();
            let want = reference_tensor(
                "tests/fixtures/ntk/mlp_tanh_reference.safetensors",
                reference,
            )
            .1;
            let got: Vec<f64> = k.values.iter().map(|&v| v as f64).collect();
            let err = rel_error_f64(&got, &want);
            assert!(err < 1e-5, "{kind} {reference}: {err:e}");

            for count in [1, 2, 3, 7, 13] {
                let out = dir.path().join(format!("k{count}-{tile_rows}.safetensors"));
                let args = ntk_args(data, against, &out);
                for index in scrambled(count) {
                    let shard = format!("{index}/{count}");
                    let stdout = ok(
                        &args,
                        &["--kind", kind, "--tile-rows", tile_rows, "--shard", &shard],
                    );
                    assert!(stdout.contains(&format!("shard {shard}")), "{stdout}");
                }
                let merged = merge(&out);
                assert!(
                    merged.status.success(),
                    "{}",
                    String::from_utf8_lossy(&merged.stderr)
                );
                assert!(
                    std::fs::read(&out).unwrap() == one,
                    "{kind} against {against:?}, tile rows {tile_rows}, {count} shards: the \
                     merged kernel differs from the single-process one"
                );
            }
        }
    }
}

#[test]
fn projected_and_wgpu_kernels_merge_to_the_single_process_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (fixture("train.safetensors"), fixture("test.safetensors"));
    let wgpu = common::wgpu_with(&mscope::backend::wgpu::WgpuOptions::from_env()).is_some();
    let mut cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "kronecker",
            vec!["--projection", "kronecker", "--projection-dim", "6"],
        ),
        (
            "gaussian",
            vec![
                "--projection",
                "gaussian",
                "--projection-dim",
                "9",
                "--seed",
                "4",
            ],
        ),
    ];
    // (An absent adapter is reported as skipped by `wgpu_with`.)
    if wgpu {
        cases.push(("wgpu", vec![]));
    }
    for (name, extra) in &cases {
        for against in [None, Some(train.as_path())] {
            let data = if against.is_some() { &test } else { &train };
            let single = dir.path().join(format!("{name}.safetensors"));
            let mut extra = extra.clone();
            extra.extend(["--tile-rows", "2"]);
            let args = |out: &Path| {
                let mut args = ntk_args(data, against, out);
                if *name == "wgpu" {
                    let at = args.iter().position(|a| a == "--backend").unwrap();
                    args[at + 1] = "wgpu".into();
                }
                args
            };
            ok(&args(&single), &extra);
            let out = dir.path().join(format!("{name}-sharded.safetensors"));
            for index in scrambled(4) {
                let shard = format!("{index}/4");
                let mut e = extra.clone();
                e.extend(["--shard", shard.as_str()]);
                ok(&args(&out), &e);
            }
            let merged = merge(&out);
            assert!(merged.status.success(), "{}", stderr_of(&merged));
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&single).unwrap(),
                "{name} against {against:?}: merged bytes differ"
            );
        }
    }
}

/// A kernel large enough (≈ 0.7 s per shard here, tens of milliseconds per tile) that a shard
/// is reliably stopped half way: a random 16-512-512-8 MLP on 1500 random points, in tiles of
/// 24 rows.
struct Big {
    _dir: tempfile::TempDir,
    model: PathBuf,
    data: PathBuf,
    root: PathBuf,
}

impl Big {
    fn new() -> Big {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model = root.join("mlp.safetensors");
        Mlp::init(&[16, 512, 512, 8], Activation::Tanh, 3)
            .unwrap()
            .write(&model)
            .unwrap();
        let n = 1500;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let x: Vec<f32> = (0..n * 16)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let y = (0..n as i64).map(|i| i % 8).collect();
        let data = root.join("x.safetensors");
        Dataset::new(x, 16, y).unwrap().write(&data).unwrap();
        Big {
            _dir: dir,
            model,
            data,
            root,
        }
    }

    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "ntk",
            "--model",
            s(&self.model),
            "--data",
            s(&self.data),
            "--out",
            s(out),
            "--tile-rows",
            "24",
            "--threads",
            "1",
            "--backend",
            "cpu",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    fn spawn(&self, out: &Path, extra: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_mscope"))
            .args(self.args(out, extra))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Finished tiles (or blocks) in a checkpoint directory.
fn saved_tiles(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".f32"))
            .count()
    })
}

/// Waits until `child` has saved at least one tile in `dir`; panics if it ends first.
fn wait_for_a_tile(child: &mut Child, dir: &Path) {
    let start = Instant::now();
    while saved_tiles(dir) == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before a tile was saved: make the job larger");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no tile saved");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_killed_shard_resumes_and_sigterm_stops_cleanly_with_the_same_merged_bytes() {
    let big = Big::new();
    let single = big.root.join("single.safetensors");
    ok(&big.args(&single, &[]), &[]);
    let one = std::fs::read(&single).unwrap();

    let out = big.root.join("k.safetensors");
    ok(&big.args(&out, &["--shard", "0/3"]), &[]);

    // SIGKILL in the middle of shard 1: the rerun resumes from the finished tiles.
    let shard1 = out.with_file_name("k.shard-1-of-3.safetensors");
    let blocks1 = Checkpoint::dir_for(&shard1);
    let mut child = big.spawn(&out, &["--shard", "1/3"]);
    wait_for_a_tile(&mut child, &blocks1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!shard1.exists(), "a killed shard writes no shard file");
    let saved = saved_tiles(&blocks1);
    assert!(saved >= 1);
    let stdout = ok(&big.args(&out, &["--shard", "1/3"]), &[]);
    assert!(stdout.contains("resumed from the checkpoint"), "{stdout}");
    assert!(
        !blocks1.exists(),
        "the checkpoint is removed once the shard is written"
    );

    // SIGTERM in the middle of shard 2: exit status 75, tiles saved; the rerun completes.
    let shard2 = out.with_file_name("k.shard-2-of-3.safetensors");
    let blocks2 = Checkpoint::dir_for(&shard2);
    let mut child = big.spawn(&out, &["--shard", "2/3"]);
    wait_for_a_tile(&mut child, &blocks2);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(
        stopped.status.code(),
        Some(EXIT_PREEMPTED as i32),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(stderr.contains("rerun the same command"), "{stderr}");
    assert!(!shard2.exists() && saved_tiles(&blocks2) >= 1);
    let stdout = ok(&big.args(&out, &["--shard", "2/3"]), &[]);
    assert!(stdout.contains("resumed from the checkpoint"), "{stdout}");

    let merged = merge(&out);
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == one,
        "merged kernel differs after kill and SIGTERM"
    );

    // The single-process run stops on SIGTERM the same way, between blocks, and resumes.
    let stopped_out = big.root.join("stopped.safetensors");
    let blocks = Checkpoint::dir_for(&stopped_out);
    let mut child = big.spawn(&stopped_out, &["--block-rows", "48"]);
    wait_for_a_tile(&mut child, &blocks);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(EXIT_PREEMPTED as i32));
    assert!(!stopped_out.exists());
    let stdout = ok(&big.args(&stopped_out, &["--block-rows", "48"]), &[]);
    assert!(stdout.contains("rows resumed"), "{stdout}");
    assert!(std::fs::read(&stopped_out).unwrap() == one);
}

/// A block saved before a SIGTERM and damaged afterwards (one flipped bit, as a disk error
/// would) is recomputed on resume, saying so, and the kernel is the uninterrupted run's.
#[test]
fn a_damaged_checkpoint_block_is_recomputed_not_reused() {
    let big = Big::new();
    let single = big.root.join("single.safetensors");
    ok(&big.args(&single, &[]), &[]);
    let out = big.root.join("stopped.safetensors");
    let blocks = Checkpoint::dir_for(&out);
    let mut child = big.spawn(&out, &["--block-rows", "48"]);
    wait_for_a_tile(&mut child, &blocks);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(EXIT_PREEMPTED as i32));
    let saved: Vec<PathBuf> = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "f32"))
        .collect();
    assert!(!saved.is_empty());
    for block in &saved {
        let mut bytes = std::fs::read(block).unwrap();
        bytes[5] ^= 0x10;
        std::fs::write(block, bytes).unwrap();
    }
    let args = big.args(&out, &["--block-rows", "48"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let resumed = run_mscope_ok(&args);
    let stderr = stderr_of(&resumed);
    assert_eq!(
        stderr.matches("damaged block").count(),
        saved.len(),
        "{stderr}"
    );
    assert!(stderr.contains("computed again"), "{stderr}");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&single).unwrap());
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `mscope merge` fails, names every `needle`, and writes nothing.
fn refused(out: &Path, needles: &[&str]) {
    let merged = merge(out);
    let stderr = stderr_of(&merged);
    assert_eq!(merged.status.code(), Some(1), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "a refused merge wrote {}", out.display());
}

#[test]
fn merge_refuses_missing_truncated_duplicate_and_foreign_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (fixture("train.safetensors"), fixture("test.safetensors"));
    let out = dir.path().join("k.safetensors");
    let shard = |i: usize| dir.path().join(format!("k.shard-{i}-of-3.safetensors"));
    let run_shard = |data: &Path, i: usize, extra: &[&str]| {
        let index = format!("{i}/3");
        let mut e = vec!["--tile-rows", "4", "--shard", index.as_str()];
        e.extend_from_slice(extra);
        ok(&ntk_args(data, None, &out), &e);
    };
    refused(&out, &["no shards found", "k.shard-I-of-N.safetensors"]);
    for i in 0..3 {
        run_shard(&train, i, &[]);
    }
    let keep = |i: usize| std::fs::read(shard(i)).unwrap();
    let (s0, s1, s2) = (keep(0), keep(1), keep(2));

    // Missing.
    std::fs::remove_file(shard(1)).unwrap();
    refused(&out, &["missing", "k.shard-1-of-3.safetensors"]);
    // Truncated.
    std::fs::write(shard(1), &s1[..s1.len() / 2]).unwrap();
    refused(
        &out,
        &["corrupt or truncated", "k.shard-1-of-3.safetensors"],
    );
    // A copy of another shard under this one's name.
    std::fs::write(shard(1), &s0).unwrap();
    refused(
        &out,
        &["duplicate", "k.shard-1-of-3.safetensors", "holds shard 0/3"],
    );
    // Another run's shard: other data, then other arguments, then another thread count.
    std::fs::remove_file(shard(1)).unwrap();
    std::fs::remove_file(shard(0)).unwrap();
    run_shard(&test, 1, &[]);
    std::fs::write(shard(0), &s0).unwrap();
    refused(
        &out,
        &["mismatched", "k.shard-1-of-3.safetensors", "inputs.data"],
    );
    run_shard(&train, 1, &["--kind", "trntk0"]);
    refused(&out, &["mismatched", "k.shard-1-of-3.safetensors", "kind"]);
    std::fs::remove_file(shard(1)).unwrap();
    let mut args = ntk_args(&train, None, &out);
    let threads = args.iter().position(|a| a == "--threads").unwrap();
    args[threads + 1] = "1".into();
    ok(&args, &["--tile-rows", "4", "--shard", "1/3"]);
    refused(
        &out,
        &["mismatched", "k.shard-1-of-3.safetensors", "threads"],
    );
    // A shard of a run cut into another count.
    std::fs::write(shard(1), &s1).unwrap();
    ok(
        &ntk_args(&train, None, &out),
        &["--tile-rows", "4", "--shard", "0/2"],
    );
    refused(&out, &["different counts", "k.shard-0-of-2.safetensors"]);
    std::fs::remove_file(dir.path().join("k.shard-0-of-2.safetensors")).unwrap();

    // Restored, the same files merge.
    assert_eq!((keep(0), keep(1), keep(2)), (s0, s1, s2));
    let merged = merge(&out);
    assert!(merged.status.success(), "{}", stderr_of(&merged));
}

/// Flips one bit in the middle of the tensor data of `path` (a safetensors file), which leaves
/// its header, and so the file's readability, intact.
fn flip_a_data_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = 8 + header..bytes.len();
    assert!(!data.is_empty(), "{} holds no tensor data", path.display());
    let middle = data.start + data.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn merge_refuses_a_shard_whose_tensor_data_changed_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let train = fixture("train.safetensors");
    let kernel = dir.path().join("k.safetensors");
    for index in ["0/2", "1/2"] {
        ok(
            &ntk_args(&train, None, &kernel),
            &["--tile-rows", "4", "--shard", index],
        );
    }
    let texts = texts_file(dir.path(), 1);
    let embeddings = dir.path().join("e.safetensors");
    for index in ["0/2", "1/2"] {
        ok(&embed_args(&texts, &embeddings), &["--shard", index]);
    }
    for (out, shard) in [
        (&kernel, "k.shard-1-of-2.safetensors"),
        (&embeddings, "e.shard-1-of-2.safetensors"),
    ] {
        let path = dir.path().join(shard);
        let intact = std::fs::read(&path).unwrap();
        flip_a_data_bit(&path);
        refused(out, &["corrupt", shard, "digest"]);
        // The same shard undamaged merges: the digest is the data's, not a chance refusal.
        std::fs::write(&path, intact).unwrap();
        let merged = merge(out);
        assert!(merged.status.success(), "{}", stderr_of(&merged));
    }
}

#[test]
fn bad_shard_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.safetensors");
    let train = fixture("train.safetensors");
    for (shard, needle) in [("3/3", "0 ≤ I < N"), ("1", "expected I/N"), ("0/0", "I/N")] {
        let mut args: Vec<String> = ntk_args(&train, None, &out);
        args.extend(["--shard".into(), shard.into()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let failed = run_mscope(&a);
        // A usage error: clap's status 2 and its message, no panic, nothing written.
        let stderr = stderr_of(&failed);
        assert_eq!(failed.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}

/// `mscope embed` with MiniLM on `input`, batches of 4, every run on one thread count.
fn embed_args(input: &Path, out: &Path) -> Vec<String> {
    [
        "embed",
        "--model",
        s(&common::minilm_dir()),
        "--input",
        s(input),
        "--out",
        s(out),
        "--batch-size",
        "4",
        "--threads",
        "2",
        "--backend",
        "cpu",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The fixture texts, `copies` times over with labels, as .jsonl.
fn texts_file(dir: &Path, copies: usize) -> PathBuf {
    let lines: String = (0..copies)
        .flat_map(|c| {
            common::fixture_texts().into_iter().map(move |t| {
                serde_json::json!({"text": t, "label": format!("copy{}", c % 3)}).to_string() + "\n"
            })
        })
        .collect();
    let path = dir.join(format!("texts{copies}.jsonl"));
    std::fs::write(&path, lines).unwrap();
    path
}

fn same_embeddings(a: &Path, b: &Path, what: &str) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{what}: embeddings differ"
    );
    // The sidecar's header names the file it belongs to; everything else must be the same bytes.
    let sidecar = |p: &Path| {
        let text = std::fs::read_to_string(mscope::io::embeddings::texts_sidecar_path(p)).unwrap();
        let (header, rows) = text.split_once('\n').unwrap();
        let mut header: serde_json::Value = serde_json::from_str(header).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            header["sidecar_of"], name,
            "{what}: the sidecar names its file"
        );
        header.as_object_mut().unwrap().remove("sidecar_of");
        (header, rows.to_string())
    };
    assert!(sidecar(a) == sidecar(b), "{what}: texts sidecars differ");
}

#[test]
fn embed_shards_merge_to_the_single_process_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = texts_file(dir.path(), 2);
    let single = dir.path().join("single.safetensors");
    ok(&embed_args(&input, &single), &[]);
    for count in [1, 3, 5] {
        let out = dir.path().join(format!("e{count}.safetensors"));
        for index in scrambled(count) {
            let shard = format!("{index}/{count}");
            let stdout = ok(&embed_args(&input, &out), &["--shard", &shard]);
            assert!(stdout.contains(&format!("embed shard {shard}")), "{stdout}");
        }
        let merged = merge(&out);
        assert!(merged.status.success(), "{}", stderr_of(&merged));
        same_embeddings(&out, &single, &format!("{count} shards"));
    }

    // An input edited after the shards ran is refused by name.
    let out = dir.path().join("e3.safetensors");
    std::fs::remove_file(&out).unwrap();
    std::fs::write(&input, "{\"text\": \"changed\", \"label\": \"x\"}\n").unwrap();
    let merged = merge(&out);
    assert_eq!(merged.status.code(), Some(1));
    let stderr = stderr_of(&merged);
    assert!(
        stderr.contains("texts2.jsonl") && stderr.contains("changed since"),
        "{stderr}"
    );
}

#[test]
fn a_killed_or_terminated_embed_shard_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // 240 texts in 60 batches: tens of milliseconds per batch.
    let input = texts_file(dir.path(), 10);
    let single = dir.path().join("single.safetensors");
    ok(&embed_args(&input, &single), &[]);
    let out = dir.path().join("e.safetensors");
    let spawn = |shard: &str| {
        Command::new(env!("CARGO_BIN_EXE_mscope"))
            .args(embed_args(&input, &out))
            .args(["--shard", shard])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // SIGKILL in shard 0, SIGTERM in shard 1.
    let shard0 = out.with_file_name("e.shard-0-of-2.safetensors");
    let mut child = spawn("0/2");
    wait_for_a_tile(&mut child, &Checkpoint::dir_for(&shard0));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!shard0.exists());
    let shard1 = out.with_file_name("e.shard-1-of-2.safetensors");
    let mut child = spawn("1/2");
    wait_for_a_tile(&mut child, &Checkpoint::dir_for(&shard1));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(
        stopped.status.code(),
        Some(EXIT_PREEMPTED as i32),
        "{}",
        stderr_of(&stopped)
    );
    assert!(!shard1.exists());
    for shard in ["1/2", "0/2"] {
        let stdout = ok(&embed_args(&input, &out), &["--shard", shard]);
        assert!(stdout.contains("resumed from the checkpoint"), "{stdout}");
    }
    let merged = merge(&out);
    assert!(merged.status.success(), "{}", stderr_of(&merged));
    same_embeddings(&out, &single, "after kill and SIGTERM");
}

#[test]
fn compare_shards_merge_to_the_single_process_report() {
    let dir = tempfile::tempdir().unwrap();
    let wgpu = common::wgpu_with(&mscope::backend::wgpu::WgpuOptions::from_env()).is_some();
    let backends: &[&str] = if wgpu { &["cpu", "wgpu"] } else { &["cpu"] };
    for backend in backends {
        let args = |out: &Path, extra: &[&str]| {
            let mut a = vec![
                "compare",
                "--synthetic",
                "13x2000",
                "--backend",
                backend,
                "--out",
                s(out),
            ];
            a.extend_from_slice(extra);
            a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
        };
        let single = dir.path().join(format!("{backend}.json"));
        let table = ok(&args(&single, &[]), &[]);
        for count in [1, 2, 5] {
            let out = dir.path().join(format!("{backend}-{count}.json"));
            for index in scrambled(count) {
                ok(&args(&out, &["--shard", &format!("{index}/{count}")]), &[]);
            }
            let merged = merge(&out);
            assert!(merged.status.success(), "{}", stderr_of(&merged));
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&single).unwrap(),
                "{backend}, {count} shards: the merged report differs"
            );
            // The table is the single run's but for the timings.
            let merged_table = String::from_utf8_lossy(&merged.stdout);
            let rows = |t: &str| {
                t.lines()
                    .filter(|l| l.starts_with("| "))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            assert_eq!(rows(&merged_table), rows(&table));
        }
        // A shard at another test level belongs to another run.
        let out = dir.path().join(format!("{backend}-mixed.json"));
        ok(&args(&out, &["--shard", "0/2"]), &[]);
        ok(&args(&out, &["--shard", "1/2", "--level", "0.1"]), &[]);
        refused(
            &out,
            &[
                "mismatched",
                &format!("{backend}-mixed.shard-1-of-2.safetensors"),
                "level",
            ],
        );
    }
}

/// `--devices`: workers on several devices take tiles from one queue. A CI machine has one wgpu
/// adapter (lavapipe) and the GPU machine one CUDA device, so two workers share device 0
/// (`--devices 0,0`); each backend that is absent is reported skipped.
#[test]
fn several_device_workers_write_the_one_device_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (fixture("train.safetensors"), fixture("test.safetensors"));
    // The CPU is one device already.
    let cpu = dir.path().join("cpu.safetensors");
    let mut args = ntk_args(&train, None, &cpu);
    args.extend(["--devices".into(), "0,1".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    common::assert_fails_cleanly(&a, &["--devices needs --backend cuda or --backend wgpu"]);
    let wgpu = common::wgpu_with(&mscope::backend::wgpu::WgpuOptions::from_env()).is_some();
    let cuda = common::cuda_with(&mscope::backend::cuda::CudaOptions::from_env()).is_some();
    // (An absent backend is reported skipped by `wgpu_with` / `cuda_with`.)
    for (kind, present) in [("wgpu", wgpu), ("cuda", cuda)] {
        if present {
            devices_share_one_queue(kind, &dir, &train, &test);
        }
    }
}

/// `--devices 0` against `--devices 0,0` and two shards on `--devices 0,0`, on backend `kind`.
fn devices_share_one_queue(kind: &str, dir: &tempfile::TempDir, train: &Path, test: &Path) {
    for against in [None, Some(train)] {
        let data = if against.is_some() { test } else { train };
        let args = |out: &Path, devices: &str, extra: &[&str]| {
            let mut args = ntk_args(data, against, out);
            let at = args.iter().position(|a| a == "--backend").unwrap();
            args[at + 1] = kind.into();
            args.extend([
                "--tile-rows".into(),
                "2".into(),
                "--devices".into(),
                devices.into(),
            ]);
            args.extend(extra.iter().map(|e| e.to_string()));
            args
        };
        let one = dir.path().join("one.safetensors");
        let stdout = ok(&args(&one, "0", &[]), &[]);
        assert!(stdout.contains(&format!("on 1 × {kind}")), "{stdout}");
        let k = KernelFile::read(&one).unwrap();
        let want = reference_tensor(
            "tests/fixtures/ntk/mlp_tanh_reference.safetensors",
            if against.is_some() {
                "trntk_test"
            } else {
                "trntk"
            },
        )
        .1;
        let got: Vec<f64> = k.values.iter().map(|&v| v as f64).collect();
        assert!(rel_error_f64(&got, &want) < 1e-5);

        let two = dir.path().join("two.safetensors");
        let stdout = ok(&args(&two, "0,0", &[]), &[]);
        assert!(stdout.contains(&format!("on 2 × {kind}")), "{stdout}");
        assert!(std::fs::read(&two).unwrap() == std::fs::read(&one).unwrap());

        let sharded = dir.path().join("sharded.safetensors");
        for shard in ["1/2", "0/2"] {
            ok(&args(&sharded, "0,0", &["--shard", shard]), &[]);
        }
        let merged = merge(&sharded);
        assert!(merged.status.success(), "{}", stderr_of(&merged));
        assert!(std::fs::read(&sharded).unwrap() == std::fs::read(&one).unwrap());
    }
}

#[test]
fn classifier_kernel_shards_merge_to_the_single_process_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let model = repo_path("tests/fixtures/classifiers/tiny-bert-cls");
    let args = |out: &Path| -> Vec<String> {
        [
            "ntk",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--kind",
            "trntk",
            "--tile-rows",
            "1",
            "--threads",
            "2",
            "--backend",
            "cpu",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let single = dir.path().join("single.safetensors");
    ok(&args(&single), &[]);
    let one = std::fs::read(&single).unwrap();
    for count in [2, 3, 5] {
        let out = dir.path().join(format!("k{count}.safetensors"));
        for index in scrambled(count) {
            ok(&args(&out), &["--shard", &format!("{index}/{count}")]);
        }
        let merged = merge(&out);
        assert!(
            merged.status.success(),
            "{}",
            String::from_utf8_lossy(&merged.stderr)
        );
        assert!(
            std::fs::read(&out).unwrap() == one,
            "{count} shards of a classifier's kernel differ from the single-process one"
        );
    }
}
