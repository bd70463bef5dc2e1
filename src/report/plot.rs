//! PNG plots (plotters with an embedded DejaVu font, so no system font is needed): scatter,
//! lines, bars and heat maps, each written to a temporary name and renamed into place.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::ranged1d::{SegmentedCoord, ValueFormatter};
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;

use crate::error::{Error, Result};
use crate::io::output_guard::TempFile;

const SIZE: (u32, u32) = (960, 680);
const FONT: &str = "sans-serif";

/// One labelled group of points (a scatter colour, a line).
#[derive(Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

/// Points gathered by group name (a label, a backend), in order of first appearance.
pub type Groups = Vec<(String, Vec<(f64, f64)>)>;

/// The [`Series`] of each group, to hand to a plot.
pub fn series(groups: &[(String, Vec<(f64, f64)>)]) -> Vec<Series<'_>> {
    groups
        .iter()
        .map(|(label, points)| Series { label, points })
        .collect()
}

/// Labelled points gathered into one group per label, in order of first appearance.
pub fn grouped(points: impl Iterator<Item = (String, (f64, f64))>) -> Groups {
    let mut groups: Groups = Vec::new();
    for (label, point) in points {
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(point),
            None => groups.push((label, vec![point])),
        }
    }
    groups
}

/// Points of each label (and of unlabelled rows, label -1) taken from `[n, k]` coordinates:
/// x from column `cx`, y from column `cy` or, without one, the label's index (a strip plot).
/// Labels without rows are left out.
pub fn points_by_label(
    coords: &[f64],
    k: usize,
    (cx, cy): (usize, Option<usize>),
    labels: &[i64],
    names: &[String],
) -> Groups {
    let mut groups: Groups = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    groups.push(("(no label)".to_string(), Vec::new()));
    for (i, &l) in labels.iter().enumerate() {
        let slot = if l >= 0 { l as usize } else { names.len() };
        let y = cy.map_or(slot as f64, |cy| coords[i * k + cy]);
        groups[slot].1.push((coords[i * k + cx], y));
    }
    groups.retain(|(_, p)| !p.is_empty());
    groups
}

/// Matplotlib's "tab10" (distinct, colour-blind-friendlier than a rainbow), then black and
/// olive so a dozen kernel families still get a colour each.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(128, 128, 0),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// How an axis writes its tick values.
type TickFormat<'a> = &'a dyn Fn(&f64) -> String;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws onto a white canvas at a temporary `.png` name beside `path`, then renames it.
fn render(path: &Path, draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is valid"));
    });
    let fail = |message: String| Error::Plot {
        path: path.to_path_buf(),
        message,
    };
    crate::io::check_target(path)?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(fail(format!("folder {} does not exist", folder.display())));
    }
    // The image encoder picks the format by extension: the temporary name ends in `.png`. It
    // is created (and recorded, for removal on error or signal) before the encoder fills it.
    let mut tmp = crate::io::temp_path(path)?.into_os_string();
    tmp.push(".png");
    let tmp = PathBuf::from(tmp);
    let (temp, _) = TempFile::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let drawn = (|| -> DrawResult {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| fail(e.to_string()))?;
    temp.hold_for_tests();
    std::fs::rename(temp.path(), path).map_err(|e| fail(e.to_string()))
}

/// The range of `values` widened by 5% on each side (and made non-empty).
fn padded_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    lo - pad..hi + pad
}

/// How an axis maps values.
#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Logarithmic; only positive values can be placed.
    Log,
}

/// How [`xy`] draws its series.
#[derive(Clone, Copy, PartialEq)]
pub enum Style {
    /// One marker per point, one colour per series.
    Scatter,
    /// Markers on a logarithmic x axis (every x positive): quantities over problem sizes that
    /// span orders of magnitude.
    ScatterLogX,
    /// One line per series.
    Lines,
    /// Lines on a logarithmic y axis (every y positive): spectra, losses.
    LinesLogY,
}

/// A scatter or line plot: axes fitted to every point of `series`, a mesh, markers or lines in
/// palette order, and a legend.
pub fn xy(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    style: Style,
) -> Result<()> {
    let as_lines = matches!(style, Style::Lines | Style::LinesLogY);
    let x_scale = match style {
        Style::ScatterLogX => Scale::Log,
        _ => Scale::Linear,
    };
    let y_scale = match style {
        Style::LinesLogY => Scale::Log,
        _ => Scale::Linear,
    };
    // A log x axis is a linear axis over log10(x), labelled with powers of ten: plotters' log
    // coordinates would make every chart type generic over both axes.
    let logged: Vec<Vec<(f64, f64)>>;
    let series: Vec<Series> = match x_scale {
        Scale::Linear => series.to_vec(),
        Scale::Log => {
            logged = series
                .iter()
                .map(|s| {
                    s.points
                        .iter()
                        .filter(|p| p.0 > 0.0)
                        .map(|&(x, y)| (x.log10(), y))
                        .collect()
                })
                .collect();
            series
                .iter()
                .zip(&logged)
                .map(|(s, points)| Series {
                    label: s.label,
                    points,
                })
                .collect()
        }
    };
    let power_of_ten = |v: &f64| format!("{:.0e}", 10f64.powf(*v));
    let x_ticks: Option<TickFormat> = match x_scale {
        Scale::Linear => None,
        Scale::Log => Some(&power_of_ten),
    };
    render(path, |root| {
        let points = || series.iter().flat_map(|s| s.points.iter());
        let xr = padded_range(points().map(|p| p.0));
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64);
        let axes = (x_label, y_label);
        match y_scale {
            Scale::Linear => {
                let yr = padded_range(points().map(|p| p.1));
                let chart = builder.build_cartesian_2d(xr, yr)?;
                draw_xy(chart, axes, (x_ticks, None), &series, as_lines)
            }
            Scale::Log => {
                let (lo, hi) = points()
                    .map(|p| p.1)
                    .filter(|y| *y > 0.0 && y.is_finite())
                    .fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
                        (lo.min(y), hi.max(y))
                    });
                let yr = if lo <= hi {
                    lo / 1.5..hi * 1.5
                } else {
                    0.1..1.0
                };
                let chart = builder.build_cartesian_2d(xr, yr.log_scale())?;
                // Powers of ten as 1e-5, not plotters' 9.999999e-5.
                draw_xy(
                    chart,
                    axes,
                    (x_ticks, Some(&|v| format!("{v:.0e}"))),
                    &series,
                    as_lines,
                )
            }
        }
    })
}

/// The mesh, the series and the legend of [`xy`], for either y scale.
fn draw_xy<'a, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    (x_label, y_label): (&str, &str),
    (x_ticks, y_ticks): (Option<TickFormat>, Option<TickFormat>),
    series: &[Series],
    as_lines: bool,
) -> DrawResult {
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label).y_desc(y_label).label_style((FONT, 14));
    if let Some(format) = x_ticks {
        mesh.x_label_formatter(format);
    }
    if let Some(format) = y_ticks {
        mesh.y_label_formatter(format);
    }
    mesh.draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        if as_lines {
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?
                .label(s.label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        } else {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, c.mix(0.75).filled())),
                )?
                .label(s.label)
                .legend(move |p| Circle::new(p, 5, c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn categories(n: usize) -> SegmentedCoord<RangedCoordusize> {
    (0..n.max(1) - 1).into_segmented()
}

/// Label of the category whose centre a segmented axis asks for.
fn category<'a>(labels: &'a [String], v: &SegmentValue<usize>) -> &'a str {
    match v {
        SegmentValue::CenterOf(i) => labels.get(*i).map_or("", String::as_str),
        _ => "",
    }
}

/// Vertical bars, one per label.
pub fn bars(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    labels: &[String],
    values: &[f64],
) -> Result<()> {
    assert_eq!(labels.len(), values.len(), "one bar per label");
    render(path, |root| {
        let top = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let bottom = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::min);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                categories(values.len()),
                bottom * 1.05..(top * 1.05).max(1e-12),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(values.len())
            .x_label_formatter(&|v| category(labels, v).to_string())
            .label_style((FONT, 14))
            .draw()?;
        chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                colour(0).filled(),
            );
            bar.set_margin(0, 0, 6, 6);
            bar
        }))?;
        Ok(())
    })
}

/// Sequential colour map from white (low) to dark blue (high).
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// A heat map of a row-major `[rows, cols]` table with row 0 at the top; cells show their value
/// when the table is small enough to read.
pub fn heatmap(
    path: &Path,
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[f64],
    value_range: (f64, f64),
) -> Result<()> {
    let (rows, cols) = (row_labels.len(), col_labels.len());
    assert_eq!(values.len(), rows * cols, "one value per cell");
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(110)
            .build_cartesian_2d(categories(cols), categories(rows))?;
        let flipped: Vec<String> = row_labels.iter().rev().cloned().collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols)
            .y_labels(rows)
            .x_label_formatter(&|v| category(col_labels, v).to_string())
            .y_label_formatter(&|v| category(&flipped, v).to_string())
            .label_style((FONT, 14))
            .draw()?;
        let (lo, hi) = value_range;
        let span = if hi > lo { hi - lo } else { 1.0 };
        let cell = |r: usize, c: usize| {
            let y = rows - 1 - r;
            (
                [
                    (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                ],
                values[r * cols + c],
            )
        };
        chart.draw_series((0..rows * cols).map(|i| {
            let (corners, v) = cell(i / cols, i % cols);
            Rectangle::new(corners, shade((v - lo) / span).filled())
        }))?;
        if rows * cols <= 144 {
            chart.draw_series(
                (0..rows * cols)
                    .filter(|&i| values[i].is_finite())
                    .map(|i| {
                        let (r, c) = (i / cols, i % cols);
                        let v = values[i];
                        let ink: &'static RGBColor = if (v - lo) / span > 0.55 {
                            &WHITE
                        } else {
                            &BLACK
                        };
                        let style = TextStyle::from((FONT, 14).into_font()).color(ink).pos(
                            text_anchor::Pos::new(
                                text_anchor::HPos::Center,
                                text_anchor::VPos::Center,
                            ),
                        );
                        Text::new(
                            format!("{v:.3}"),
                            (
                                SegmentValue::CenterOf(c),
                                SegmentValue::CenterOf(rows - 1 - r),
                            ),
                            style,
                        )
                    }),
            )?;
        }
        Ok(())
    })
}
