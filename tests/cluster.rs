//! `mscope cluster` against scikit-learn (tools/make_cluster_fixtures.py): k-means' best inertia
//! over the same number of restarts, and the agreement scores on the same partitions.

mod common;

use common::{assert_fails_cleanly, repo_path, run_mscope_ok};
use mscope::instruments::cluster::{
    adjusted_rand_index, contingency, kmeans, normalized_mutual_information, purity, ClusterOptions,
};
use mscope::io::embedding_inputs::EmbeddingInput;

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_path("tests/fixtures/cluster_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn agreement_scores_equal_scikit_learns_on_the_same_partitions() {
    let want = reference();
    let truth = indices(&want["truth"]);
    for run in want["runs"].as_array().unwrap() {
        let k = run["k"].as_u64().unwrap() as usize;
        let table = contingency(&truth, 4, &indices(&run["labels"]), k);
        for (name, got) in [
            ("ari", adjusted_rand_index(&table)),
            ("nmi", normalized_mutual_information(&table)),
            ("purity", purity(&table)),
        ] {
            let want = run[name].as_f64().unwrap();
            assert!((got - want).abs() < 1e-12, "k {k} {name}: {got} vs {want}");
        }
    }
    // Identical partitions, relabelled: every score is 1.
    let relabelled: Vec<usize> = truth.iter().map(|&t| (t + 1) % 4).collect();
    let table = contingency(&truth, 4, &relabelled, 4);
    assert!((adjusted_rand_index(&table) - 1.0).abs() < 1e-12);
    assert!((normalized_mutual_information(&table) - 1.0).abs() < 1e-12);
    assert_eq!(purity(&table), 1.0);
}

#[test]
fn best_inertia_is_within_one_percent_of_scikit_learns() {
    let file = EmbeddingInput {
        path: repo_path("tests/fixtures/sklearn_embeddings.npy"),
        ..Default::default()
    }
    .read()
    .unwrap();
    for run in reference()["runs"].as_array().unwrap() {
        let k = run["k"].as_u64().unwrap() as usize;
        let options = ClusterOptions {
            k,
            restarts: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        };
        let (best, inertias) = kmeans(&file.embeddings, file.dim, &options).unwrap();
        let want = run["inertia"].as_f64().unwrap();
        assert!(
            best.inertia <= want * 1.01,
            "k {k}: inertia {} vs scikit-learn's {want}",
            best.inertia
        );
        assert_eq!(inertias.len(), 10);
        assert!(inertias.iter().all(|&i| i >= best.inertia));
        // The inertia is the assignment's: recompute it from the centres.
        let recomputed: f64 = (0..file.rows())
            .map(|r| {
                let c = best.assignment[r];
                file.row(r)
                    .iter()
                    .zip(&best.centres[c * file.dim..(c + 1) * file.dim])
                    .map(|(&x, m)| (f64::from(x) - m).powi(2))
                    .sum::<f64>()
            })
            .sum();
        assert!((recomputed - best.inertia).abs() <= 1e-6 * best.inertia);
    }
}

#[test]
fn cli_clusters_labelled_embeddings_and_refuses_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cluster.json");
    let plot = dir.path().join("cluster.png");
    let input = repo_path("tests/fixtures/sklearn_embeddings.npz");
    let input = input.to_str().unwrap();
    run_mscope_ok(&[
        "cluster",
        "--input",
        input,
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["k"], 4, "k defaults to the number of labels");
    assert_eq!(report["sizes"].as_array().unwrap().len(), 4);
    assert!(plot.is_file());
    assert_fails_cleanly(
        &["cluster", "--input", input, "--k", "301"],
        &["--k 301 must be between 1 and the number of rows (300)"],
    );
    let plain = repo_path("tests/fixtures/sklearn_embeddings.npy");
    assert_fails_cleanly(
        &["cluster", "--input", plain.to_str().unwrap()],
        &["--k is needed"],
    );
}
