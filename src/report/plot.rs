//! Plots as PNG, or SVG when the path ends in `.svg` (plotters with an embedded DejaVu font, so
//! no system font is needed): scatter, lines, bars and heat maps with colour bars, legends beside
//! the chart, each written to a temporary name and renamed into place.

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
pub(super) const FONT: &str = "sans-serif";

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

/// The file format of a plot, chosen by its path's extension.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Png,
    /// Vector graphics for slides and papers: text stays text, scaling stays sharp.
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "png" => Ok(Format::Png),
        "svg" => Ok(Format::Svg),
        _ => Err(Error::input(format!(
            "{}: a plot is written as PNG (.png) or SVG (.svg); the extension {} is neither",
            path.display(),
            if ext.is_empty() {
                "is missing and".to_string()
            } else {
                format!("\".{ext}\"")
            }
        ))),
    }
}

/// The up-front check of a command's plot path, before any work: `.png` or `.svg`.
pub fn check_format(flag: &str, path: Option<&Path>) -> Result<()> {
    match path.map(format_of) {
        Some(Err(Error::Input(message))) => Err(Error::input(format!("{flag} {message}"))),
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// What a plot draws, on any plotters backend (a bitmap for PNG, SVG): a trait rather than a
/// closure because the drawing is generic over the backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Registers the embedded DejaVu Sans as [`FONT`] with plotters (once per process): plots never
/// depend on the system's fonts.
pub(super) fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is valid"));
    });
}

/// Draws `figure` onto a white canvas at a temporary name beside `path` in the format its
/// extension names (PNG or SVG), then renames it into place.
fn render(path: &Path, figure: &impl Figure) -> Result<()> {
    register_font();
    let format = format_of(path)?;
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
    // The image encoder picks the format by extension: the temporary name ends in the output's
    // (`.png` or `.svg`). It is created (and recorded, for removal on error or signal) before the encoder fills it.
    let mut tmp = crate::io::temp_path(path)?.into_os_string();
    tmp.push(match format {
        Format::Png => ".png",
        Format::Svg => ".svg",
    });
    let tmp = PathBuf::from(tmp);
    let (temp, _) = TempFile::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fn paint<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, figure: &impl Figure) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        figure.draw(&root)?;
        root.present()?;
        Ok(())
    }
    let drawn = match format {
        Format::Png => paint(BitMapBackend::new(&tmp, SIZE).into_drawing_area(), figure),
        Format::Svg => paint(SVGBackend::new(&tmp, SIZE).into_drawing_area(), figure),
    };
    drawn.map_err(|e| fail(e.to_string()))?;
    temp.hold_for_tests();
    std::fs::rename(temp.path(), path).map_err(|e| fail(e.to_string()))
}

/// Draws `title` at the top of `root` and returns the area below it: in one line at 24 px when
/// it fits the canvas, else at 20 px over as few lines as fit (see [`wrap`]), so long titles
/// (a model and a file name) are never cut off at the edges.
fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let width = root.dim_in_pixel().0;
    // 20 px of margin on each side. A text whose size cannot be estimated cannot be drawn
    // either: drawing it reports the error.
    let room = width.saturating_sub(40);
    let fits = |text: &str, size: f64| {
        let font = TextStyle::from((FONT, size).into_font());
        root.estimate_text_size(text, &font)
            .is_ok_and(|(w, _)| w <= room)
    };
    if fits(title, 24.0) {
        return Ok(root.titled(title, (FONT, 24))?);
    }
    let lines = wrap(title, |line| fits(line, 20.0));
    let line_height = 26;
    let style = TextStyle::from((FONT, 20).into_font()).pos(text_anchor::Pos::new(
        text_anchor::HPos::Center,
        text_anchor::VPos::Top,
    ));
    for (i, line) in (0..).zip(&lines) {
        root.draw_text(line, &style, (width as i32 / 2, 6 + i * line_height))?;
    }
    let block = 12 + lines.len() as u32 * line_height as u32;
    Ok(root.split_vertically(block).1)
}

/// `text` in lines of whole words, each as long as `fits` allows (a single word that does not
/// fit gets a line of its own).
fn wrap(text: &str, fits: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if fits(&format!("{line} {word}")) => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
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

/// The axes of an [`xy`] plot: their titles and, where the quantity has natural bounds (a
/// probability, α̂), the range to show whatever the data span.
pub struct Axes<'a> {
    pub x: &'a str,
    pub y: &'a str,
    pub x_range: Option<Range<f64>>,
    pub y_range: Option<Range<f64>>,
}

impl<'a> Axes<'a> {
    /// Both axes fitted to the data.
    pub fn new(x: &'a str, y: &'a str) -> Self {
        Axes {
            x,
            y,
            x_range: None,
            y_range: None,
        }
    }

    pub fn x_range(self, range: Range<f64>) -> Self {
        Axes {
            x_range: Some(range),
            ..self
        }
    }

    pub fn y_range(self, range: Range<f64>) -> Self {
        Axes {
            y_range: Some(range),
            ..self
        }
    }
}

/// [0, 1] with room for a marker on either end: probabilities, accuracies, α̂.
pub const UNIT: Range<f64> = -0.02..1.02;

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

/// A scatter or line plot: axes fitted to every point of `series` (or to the ranges `axes`
/// fixes), a mesh, markers or lines in palette order, and a legend beside the chart, where it
/// covers no point.
pub fn xy(path: &Path, title: &str, axes: &Axes, series: &[Series], style: Style) -> Result<()> {
    let x_scale = match style {
        Style::ScatterLogX => Scale::Log,
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
    render(
        path,
        &XyFigure {
            title,
            axes,
            series: &series,
            style,
        },
    )
}

struct XyFigure<'a> {
    title: &'a str,
    axes: &'a Axes<'a>,
    /// With a logarithmic x axis, the points' x are already log10(x).
    series: &'a [Series<'a>],
    style: Style,
}

impl Figure for XyFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let as_lines = matches!(self.style, Style::Lines | Style::LinesLogY);
        let area = titled(root, self.title)?;
        let labels: Vec<&str> = self.series.iter().map(|s| s.label).collect();
        let (chart_area, legend_area) = beside_legend(&area, &labels)?;
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let xr = self
            .axes
            .x_range
            .clone()
            .unwrap_or_else(|| padded_range(points().map(|p| p.0)));
        let mut builder = ChartBuilder::on(&chart_area);
        builder
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72);
        let power_of_ten = |v: &f64| format!("{:.0e}", 10f64.powf(*v));
        let x_ticks: Option<TickFormat> = match self.style {
            Style::ScatterLogX => Some(&power_of_ten),
            _ => None,
        };
        let axes = (self.axes.x, self.axes.y);
        match self.style {
            Style::LinesLogY => {
                let yr = self.axes.y_range.clone().unwrap_or_else(|| {
                    let (lo, hi) = points()
                        .map(|p| p.1)
                        .filter(|y| *y > 0.0 && y.is_finite())
                        .fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
                            (lo.min(y), hi.max(y))
                        });
                    if lo <= hi {
                        lo / 1.5..hi * 1.5
                    } else {
                        0.1..1.0
                    }
                });
                let chart = builder.build_cartesian_2d(xr, yr.log_scale())?;
                // Powers of ten as 1e-5, not plotters' 9.999999e-5.
                draw_xy(
                    chart,
                    axes,
                    (x_ticks, Some(&|v| format!("{v:.0e}"))),
                    self.series,
                    as_lines,
                )?;
            }
            _ => {
                let yr = self
                    .axes
                    .y_range
                    .clone()
                    .unwrap_or_else(|| padded_range(points().map(|p| p.1)));
                let chart = builder.build_cartesian_2d(xr, yr)?;
                draw_xy(chart, axes, (x_ticks, None), self.series, as_lines)?;
            }
        }
        if let Some(legend_area) = legend_area {
            draw_legend(&legend_area, &labels, as_lines)?;
        }
        Ok(())
    }
}

/// The mesh and the series of [`xy`], for either y scale. Points outside fixed axis ranges are
/// left out rather than drawn over the axes.
fn draw_xy<'a, DB: DrawingBackend, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    (x_label, y_label): (&str, &str),
    (x_ticks, y_ticks): (Option<TickFormat>, Option<TickFormat>),
    series: &[Series],
    as_lines: bool,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16));
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
            chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?;
        } else {
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, c.mix(0.75).filled())),
            )?;
        }
    }
    Ok(())
}

/// Legend rows in pixels; the first sits level with the top of the chart.
const LEGEND_ROW: i32 = 22;
const LEGEND_TOP: i32 = 24;

/// `area` split into the chart and, on its right, a column as wide as the longest of `labels`
/// needs (at most 40% of the width): the legend never covers a point.
#[allow(clippy::type_complexity)]
fn beside_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[&str],
) -> std::result::Result<
    (DrawingArea<DB, Shift>, Option<DrawingArea<DB, Shift>>),
    Box<dyn std::error::Error>,
>
where
    DB::ErrorType: 'static,
{
    if labels.is_empty() {
        return Ok((area.clone(), None));
    }
    let font = TextStyle::from((FONT, 14).into_font());
    let mut widest = 0;
    for label in labels {
        widest = widest.max(area.estimate_text_size(label, &font)?.0);
    }
    let width = area.dim_in_pixel().0;
    let column = (widest + 48).min(width * 2 / 5);
    let (chart, legend) = area.split_horizontally(width - column);
    Ok((chart, Some(legend)))
}

/// One row per label: its marker (or line) in palette order and the label; rows that do not
/// fit are summed up in a last row.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[&str],
    as_lines: bool,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let height = area.dim_in_pixel().1 as i32;
    let fits = ((height - LEGEND_TOP - 48) / LEGEND_ROW).max(1) as usize;
    let shown = if labels.len() > fits {
        fits - 1
    } else {
        labels.len()
    };
    let style = TextStyle::from((FONT, 14).into_font()).pos(text_anchor::Pos::new(
        text_anchor::HPos::Left,
        text_anchor::VPos::Center,
    ));
    for (i, label) in labels.iter().take(shown).enumerate() {
        let y = LEGEND_TOP + LEGEND_ROW * i as i32;
        let c = colour(i);
        if as_lines {
            area.draw(&PathElement::new([(6, y), (24, y)], c.stroke_width(2)))?;
        } else {
            area.draw(&Circle::new((15, y), 5, c.filled()))?;
        }
        area.draw(&Text::new(label.to_string(), (32, y), style.clone()))?;
    }
    if shown < labels.len() {
        let y = LEGEND_TOP + LEGEND_ROW * shown as i32;
        let more = format!("… {} more", labels.len() - shown);
        area.draw(&Text::new(more, (32, y), style))?;
    }
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
    axes: &Axes,
    labels: &[String],
    values: &[f64],
) -> Result<()> {
    assert_eq!(labels.len(), values.len(), "one bar per label");
    render(
        path,
        &BarsFigure {
            title,
            axes,
            labels,
            values,
        },
    )
}

struct BarsFigure<'a> {
    title: &'a str,
    axes: &'a Axes<'a>,
    labels: &'a [String],
    values: &'a [f64],
}

impl Figure for BarsFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let finite = || self.values.iter().copied().filter(|v| v.is_finite());
        let top = finite().fold(0.0f64, f64::max);
        let bottom = finite().fold(0.0f64, f64::min);
        let y_range = self
            .axes
            .y_range
            .clone()
            .unwrap_or(bottom * 1.05..(top * 1.05).max(1e-12));
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(categories(self.values.len()), y_range)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(self.axes.x)
            .y_desc(self.axes.y)
            .x_labels(self.values.len())
            .x_label_formatter(&|v| category(self.labels, v).to_string())
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()?;
        chart.draw_series(self.values.iter().enumerate().map(|(i, &v)| {
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
    }
}

/// Sequential colour map from white (low) to dark blue (high).
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// Cells without a value (a table's diagonal): light grey, outside the colour map.
const EMPTY_CELL: RGBColor = RGBColor(224, 224, 224);

/// A heat map of a row-major `[rows, cols]` table.
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub rows: &'a [String],
    pub cols: &'a [String],
    pub values: &'a [f64],
    /// Where `values` are means (over splits), their standard deviations: the cells then read
    /// `mean ± sd`.
    pub sd: Option<&'a [f64]>,
    /// The values the colour map spans (beyond it, the end colours).
    pub range: (f64, f64),
    /// What the values are, above the colour bar.
    pub quantity: &'a str,
    /// Decimals in the cells.
    pub decimals: usize,
}

/// [`Heatmap`] with row 0 at the top, a colour bar on the right and each cell's value (`mean ±
/// sd` with standard deviations) in a font sized to fit the cell, left out when even a small
/// font would not.
pub fn heatmap(path: &Path, map: &Heatmap) -> Result<()> {
    let cells = map.rows.len() * map.cols.len();
    assert_eq!(map.values.len(), cells, "one value per cell");
    assert!(map.sd.is_none_or(|sd| sd.len() == cells), "one sd per cell");
    render(path, map)
}

impl Figure for Heatmap<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (rows, cols) = (self.rows.len(), self.cols.len());
        let area = titled(root, self.title)?;
        let width = area.dim_in_pixel().0;
        let (main, bar) = area.split_horizontally(width - 130);
        let label_font = TextStyle::from((FONT, 14).into_font());
        let mut widest = 0;
        for label in self.rows {
            widest = widest.max(main.estimate_text_size(label, &label_font)?.0);
        }
        let mut chart = ChartBuilder::on(&main)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size((widest + 20).clamp(48, width / 3))
            .build_cartesian_2d(categories(cols), categories(rows))?;
        let flipped: Vec<String> = self.rows.iter().rev().cloned().collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols)
            .y_labels(rows)
            .x_label_formatter(&|v| category(self.cols, v).to_string())
            .y_label_formatter(&|v| category(&flipped, v).to_string())
            .label_style((FONT, 14))
            .draw()?;
        let (lo, hi) = self.range;
        let span = if hi > lo { hi - lo } else { 1.0 };
        let corners = |i: usize| {
            let (r, c) = (i / cols, i % cols);
            let y = rows - 1 - r;
            [
                (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
            ]
        };
        chart.draw_series((0..rows * cols).map(|i| {
            let v = self.values[i];
            let fill = if v.is_finite() {
                shade((v - lo) / span)
            } else {
                EMPTY_CELL
            };
            Rectangle::new(corners(i), fill.filled())
        }))?;
        let text = |i: usize| {
            let d = self.decimals;
            match self.sd {
                Some(sd) => format!("{:.d$} ± {:.d$}", self.values[i], sd[i]),
                None => format!("{:.d$}", self.values[i]),
            }
        };
        // DejaVu Sans digits are about 0.6 em wide; a cell's text takes at most 90% of its
        // width and 60% of its height.
        let (plot_w, plot_h) = chart.plotting_area().dim_in_pixel();
        let (cell_w, cell_h) = (
            plot_w as f64 / cols.max(1) as f64,
            plot_h as f64 / rows.max(1) as f64,
        );
        let longest = (0..rows * cols)
            .filter(|&i| self.values[i].is_finite())
            .map(|i| text(i).chars().count())
            .max()
            .unwrap_or(1);
        let size = (0.9 * cell_w / (0.6 * longest as f64))
            .min(0.6 * cell_h)
            .min(16.0)
            .floor();
        if size >= 8.0 {
            chart.draw_series(
                (0..rows * cols)
                    .filter(|&i| self.values[i].is_finite())
                    .map(|i| {
                        let (r, c) = (i / cols, i % cols);
                        let ink: &'static RGBColor = if (self.values[i] - lo) / span > 0.55 {
                            &WHITE
                        } else {
                            &BLACK
                        };
                        let style = TextStyle::from((FONT, size).into_font()).color(ink).pos(
                            text_anchor::Pos::new(
                                text_anchor::HPos::Center,
                                text_anchor::VPos::Center,
                            ),
                        );
                        Text::new(
                            text(i),
                            (
                                SegmentValue::CenterOf(c),
                                SegmentValue::CenterOf(rows - 1 - r),
                            ),
                            style,
                        )
                    }),
            )?;
        }
        colour_bar(&bar, self.quantity, (lo, hi))
    }
}

/// The colour map from `lo` (bottom) to `hi` (top) with its scale, under `quantity`.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    quantity: &str,
    (lo, hi): (f64, f64),
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let mut bar = ChartBuilder::on(area)
        .caption(quantity, (FONT, 14))
        .margin_top(16)
        .margin_bottom(64)
        .margin_right(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .label_style((FONT, 13))
        .draw()?;
    const STEPS: usize = 128;
    let step = (hi - lo) / STEPS as f64;
    bar.draw_series((0..STEPS).map(|i| {
        let y = lo + step * i as f64;
        Rectangle::new(
            [(0.0, y), (1.0, y + step)],
            shade((i as f64 + 0.5) / STEPS as f64).filled(),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_fills_lines_with_whole_words() {
        let at_most = |n: usize| move |line: &str| line.chars().count() <= n;
        assert_eq!(
            wrap("Pairwise LDA accuracy over 50 splits", at_most(14)),
            ["Pairwise LDA", "accuracy over", "50 splits"]
        );
        assert_eq!(wrap("a  b", at_most(80)), ["a b"]);
        // A word longer than a line stands alone.
        assert_eq!(
            wrap("x averyverylongword y", at_most(5)),
            ["x", "averyverylongword", "y"]
        );
    }
}
