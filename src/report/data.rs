//! `mscope data`'s plot.

use std::path::Path;

use super::plot;
use crate::data::Dataset;
use crate::error::Result;

/// Every row of 2-D `data` (the `name`d dataset) coloured by label.
pub fn plot(path: &Path, name: &str, data: &Dataset) -> Result<()> {
    let coords: Vec<f64> = data.x.iter().map(|&v| v as f64).collect();
    let names: Vec<String> = (0..data.num_classes())
        .map(|k| format!("label {k}"))
        .collect();
    let groups = plot::points_by_label(&coords, 2, (0, Some(1)), &data.y, &names);
    plot::xy(
        path,
        &format!("{name} ({} rows)", data.len()),
        &plot::Axes::new("x0", "x1"),
        &plot::series(&groups),
        plot::Style::Scatter,
    )
}
