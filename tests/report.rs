//! Plots and JSON reports land as complete files under the requested name, with nothing left
//! behind; a plot into a missing directory is an error, not a panic.

mod common;

use mscope::report::plot::{bars, heatmap, xy, Axes, Heatmap, Series, Style, UNIT};

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
    let draw_all = |ext: &str| {
        let at = |kind: &str| out(&format!("{kind}.{ext}"));
        xy(
            &at("scatter"),
            "scatter",
            &Axes::new("PC1", "PC2"),
            &groups,
            Style::Scatter,
        )
        .unwrap();
        xy(
            &at("lines"),
            "lines",
            &Axes::new("α", "d(α)").x_range(UNIT),
            &groups,
            Style::Lines,
        )
        .unwrap();
        bars(
            &at("bars"),
            "bars",
            &Axes::new("component", "explained variance"),
            &names,
            &[0.5, 0.3, 0.2],
        )
        .unwrap();
        let table = [f64::NAN, 0.7, 0.9, 0.7, f64::NAN, 0.6, 0.9, 0.6, f64::NAN];
        let sd = [0.0, 0.01, 0.02, 0.01, 0.0, 0.03, 0.02, 0.03, 0.0];
        heatmap(
            &at("heatmap"),
            &Heatmap {
                title: "heat map",
                rows: &names,
                cols: &names,
                values: &table,
                sd: Some(&sd),
                range: (0.5, 1.0),
                quantity: "accuracy",
                decimals: 2,
            },
        )
        .unwrap();
    };
    draw_all("png");
    draw_all("svg");
    for kind in ["scatter", "lines", "bars", "heatmap"] {
        assert_png(&out(&format!("{kind}.png")));
        // The PNG decodes, at the documented canvas size.
        let image = image::open(out(&format!("{kind}.png"))).unwrap();
        assert_eq!((image.width(), image.height()), (960, 680), "{kind}.png");
    }
    let svg = |kind: &str| common::svg_summary(&out(&format!("{kind}.svg")));
    let scatter = svg("scatter");
    assert_eq!(
        scatter.count("circle"),
        100 + 2,
        "every point and a legend marker per series"
    );
    assert!(scatter.has_text("scatter") && scatter.has_text("PC1") && scatter.has_text("a"));
    assert!(svg("lines").count("polyline") >= 2);
    assert!(svg("bars").count("rect") >= 3);
    let heat = svg("heatmap");
    // Nine cells, the colour bar's 128 steps, the background.
    assert!(heat.count("rect") >= 9 + 128, "{:?}", heat.elements);
    assert!(heat.has_text("0.70 ± 0.01") && heat.has_text("accuracy"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        8,
        "temporary files left behind"
    );

    let missing = dir.path().join("missing/dir.png");
    let scatter = |path: &std::path::Path| {
        xy(path, "t", &Axes::new("x", "y"), &groups, Style::Scatter).unwrap_err()
    };
    let err = scatter(&missing);
    assert!(err.to_string().contains("dir.png"), "{err}");
    let err = scatter(&dir.path().join("plot.jpg"));
    assert!(
        err.to_string().contains("plot.jpg") && err.to_string().contains(".svg"),
        "{err}"
    );
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
