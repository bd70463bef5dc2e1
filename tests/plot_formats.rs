//! Every command that draws writes SVG when the path ends in `.svg` (well-formed XML with the
//! plot's elements and title) and refuses any extension but `.png` and `.svg` before any work.

mod common;

use common::{assert_fails_cleanly, repo_path, run_mscope_ok, svg_summary};

fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/{name}"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn drawing_commands_write_svg_and_refuse_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let embeddings = fixture("sklearn_embeddings.safetensors");
    let samples = [("a.txt", 0.0), ("b.txt", 0.3)].map(|(name, shift)| {
        let text: String = (0..200)
            .map(|i| format!("{}\n", (i as f64 / 200.0) + shift))
            .collect();
        std::fs::write(at(name), text).unwrap();
        at(name)
    });
    let (a, b, c) = (
        fixture("align/a.npy"),
        fixture("align/b.npy"),
        fixture("align/c.npy"),
    );
    let commands: Vec<(Vec<String>, &str, Vec<&str>)> = vec![
        (
            vec!["lda", "--input", &embeddings, "--splits", "4", "--pairwise"]
                .into_iter()
                .map(String::from)
                .collect(),
            "lda",
            vec!["lda.svg", "lda.ld2-ld3.svg", "lda.pairwise.svg"],
        ),
        (
            ["pca", "--input", &embeddings, "--components", "3"]
                .map(String::from)
                .to_vec(),
            "pca",
            vec!["pca.svg", "pca.pc2-pc3.svg", "pca.variance.svg"],
        ),
        (
            ["cluster", "--input", &fixture("sklearn_embeddings.npz")]
                .map(String::from)
                .to_vec(),
            "cluster",
            vec!["cluster.svg"],
        ),
        (
            ["align", &a, &b, &c].map(String::from).to_vec(),
            "align",
            vec!["align.svg", "align.mutual-knn.svg"],
        ),
        (
            [
                "alpha",
                "--candidate",
                &samples[0],
                "--reference",
                &samples[1],
                "--backend",
                "cpu",
            ]
            .map(String::from)
            .to_vec(),
            "alpha",
            vec!["alpha.svg"],
        ),
    ];
    for (args, stem, outputs) in &commands {
        let mut run: Vec<String> = args.clone();
        run.extend(["--plot".into(), at(&format!("{stem}.svg"))]);
        run_mscope_ok(&run.iter().map(String::as_str).collect::<Vec<_>>());
        for output in outputs {
            let svg = svg_summary(&dir.path().join(output));
            assert!(svg.count("text") >= 3, "{output}: title and axis labels");
            assert!(
                svg.count("rect") + svg.count("circle") + svg.count("polyline") > 3,
                "{output}: nothing drawn"
            );
        }
        let mut bad: Vec<String> = args.clone();
        let jpg = at(&format!("{stem}.jpg"));
        bad.extend(["--plot".into(), jpg.clone()]);
        assert_fails_cleanly(
            &bad.iter().map(String::as_str).collect::<Vec<_>>(),
            &["--plot", &format!("{stem}.jpg"), ".png", ".svg"],
        );
        assert!(!std::path::Path::new(&jpg).exists());
    }
    // The pairwise heat map reads mean ± sd in percent, beside its colour bar.
    let pairwise = svg_summary(&dir.path().join("lda.pairwise.svg"));
    assert!(pairwise.has_text(" ± ") && pairwise.has_text("accuracy (%)"));
    assert!(pairwise.count("rect") >= 16 + 128);
    // The LDA title names the data.
    assert!(svg_summary(&dir.path().join("lda.svg")).has_text("sklearn_embeddings"));
}

/// A title wider than the canvas (a long file name in the pairwise heat map's) is wrapped over
/// lines of whole words instead of running off both edges.
#[test]
fn long_titles_wrap_onto_lines_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir
        .path()
        .join("cats_lsun_ddpm_sdxl_open_dalle_clip_vit_l14_embeddings_seed0.safetensors");
    std::fs::copy(fixture("sklearn_embeddings.safetensors"), &long).unwrap();
    let plot = dir.path().join("lda.svg");
    run_mscope_ok(&[
        "lda",
        "--input",
        long.to_str().unwrap(),
        "--splits",
        "3",
        "--pairwise",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let svg = svg_summary(&dir.path().join("lda.pairwise.svg"));
    let want = "Pairwise LDA accuracy over 3 splits, synthetic embeddings \
                (cats_lsun_ddpm_sdxl_open_dalle_clip_vit_l14_embeddings_seed0.safetensors)";
    let texts: Vec<&str> = svg.texts.iter().map(|t| t.trim()).collect();
    let first = texts
        .iter()
        .position(|t| t.starts_with("Pairwise LDA"))
        .expect("the title is drawn");
    let lines = &texts[first..first + 2];
    assert_eq!(lines.join(" "), want, "{:?}", svg.texts);
    // DejaVu Sans at 20 px is at least 10 px a character on average: 92 fill the 920 px.
    assert!(lines.iter().all(|l| l.chars().count() <= 92), "{lines:?}");
}
