//! Plots and JSON reports land as complete files under the requested name, with nothing left
//! behind; a plot into a missing directory is an error, not a panic.

use mscope::report::plot::{bars, heatmap, xy, Series, Style};

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

fn assert_png(path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with(PNG_MAGIC),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 4096,
        "{} is suspiciously small ({} bytes)",
        path.display(),
        bytes.len()
    );
}

#[test]
fn every_plot_kind_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<(f64, f64)> = (0..50)
        .map(|i| (i as f64, (i as f64 / 7.0).sin()))
        .collect();
    let b: Vec<(f64, f64)> = (0..50)
        .map(|i| (i as f64, (i as f64 / 5.0).cos() + 0.5))
        .collect();
    let groups = [
        Series {
            label: "a",
            points: &a,
        },
        Series {
            label: "b",
            points: &b,
        },
    ];
    let names: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();

    let out = |name: &str| dir.path().join(name);
    xy(
        &out("scatter.png"),
        "scatter",
        "PC1",
        "PC2",
        &groups,
        Style::Scatter,
    )
    .unwrap();
    xy(
        &out("lines.png"),
        "lines",
        "α",
        "d(α)",
        &groups,
        Style::Lines,
    )
    .unwrap();
    bars(
        &out("bars.png"),
        "bars",
        "component",
        "explained variance",
        &names,
        &[0.5, 0.3, 0.2],
    )
    .unwrap();
    let table = [1.0, 0.7, 0.9, 0.7, 1.0, 0.6, 0.9, 0.6, 1.0];
    heatmap(
        &out("heatmap.png"),
        "heat map",
        &names,
        &names,
        &table,
        (0.5, 1.0),
    )
    .unwrap();
    for name in ["scatter.png", "lines.png", "bars.png", "heatmap.png"] {
        assert_png(&out(name));
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        4,
        "temporary files left behind"
    );

    let missing = dir.path().join("missing/dir.png");
    let err = xy(&missing, "t", "x", "y", &groups, Style::Scatter).unwrap_err();
    assert!(err.to_string().contains("dir.png"), "{err}");
}

#[test]
fn json_report_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let value = serde_json::json!({"pca": {"n": 3, "explained_variance_ratio": [0.5, 0.25]}});
    mscope::report::write_json(&path, &value).unwrap();
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, value);
}
