//! The suite's PNG plots (plotters, bitmap backend): CDFs, values per migration, time against
//! memory size with error bars, and grouped bars. Every plot has axes with units, a legend,
//! and the paper's figure (or the target) as a dashed reference line where one applies.
//!
//! Text is drawn with DejaVu Sans read at run time from Debian's `fonts-dejavu-core`
//! ([`FONT`], installed by `.ci/setup`); no font is committed.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font every plot's text is drawn with (Debian's `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Plot size, pixels.
const SIZE: (u32, u32) = (1000, 620);

/// Series colours, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The font file could not be read or parsed.
    #[error("the plot font {FONT} (Debian's fonts-dejavu-core; see .ci/setup): {0}")]
    Font(String),
    /// Drawing or writing the PNG failed.
    #[error("drawing {path}: {message}")]
    Draw {
        /// The PNG.
        path: String,
        /// What plotters said.
        message: String,
    },
}

/// A dashed vertical or horizontal reference line with its legend label.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Legend text, e.g. "paper: direct p50 + 221 µs".
    pub label: String,
    /// Where it is (x for a CDF, y otherwise).
    pub at: f64,
}

/// One named series of points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points; for [`errorbars`] y is the mean and `spread` gives (low, high).
    pub points: Vec<(f64, f64)>,
    /// Error bars (low, high) per point, same order as `points` (may be empty).
    pub spread: Vec<(f64, f64)>,
}

/// Registers the font once; every plot needs it.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| e.to_string())?;
            // plotters keeps the font for the process's life.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font("sans-serif", style, bytes)
                    .map_err(|_| "not a font plotters can read".to_owned())?;
            }
            Ok(())
        })
        .clone()
        .map_err(PlotError::Font)
}

fn draw_err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError::Draw {
        path: path.display().to_string(),
        message,
    }
}

/// Runs `draw` on a white PNG canvas at `path` and writes it.
fn canvas(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| draw_err(path)(e.to_string()))?;
    draw(&root).map_err(draw_err(path))?;
    root.present().map_err(|e| draw_err(path)(e.to_string()))
}

fn colour(i: usize) -> RGBColor {
    COLOURS.get(i % COLOURS.len()).copied().unwrap_or(BLACK)
}

/// Spans `values` with a margin; never empty.
fn span(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    // A single value still gets a readable axis around it.
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.05).max(1e-6);
    (if from_zero { lo } else { lo - pad })..hi + pad
}

/// A chart on a PNG canvas over the coordinates `X` and `Y`.
type Chart<'a, 'b, X, Y> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>;

/// A chart on `root` with the plots' caption, margin and label areas (`y_label_area` pixels
/// wide for the y labels), over `x` and `y`.
fn chart<'a, 'b, X: AsRangedCoord, Y: AsRangedCoord>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    title: &str,
    y_label_area: u32,
    x: X,
    y: Y,
) -> Result<Chart<'a, 'b, X::CoordDescType, Y::CoordDescType>, String> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())
}

/// Draws a chart's configured mesh with the plots' label and axis-description fonts.
fn draw_mesh<X, Y, XT, YT, DB>(mesh: &mut MeshStyle<'_, '_, X, Y, DB>) -> Result<(), String>
where
    X: Ranged<ValueType = XT> + ValueFormatter<XT>,
    Y: Ranged<ValueType = YT> + ValueFormatter<YT>,
    DB: DrawingBackend,
{
    mesh.label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(|e| e.to_string())
}

fn dashed(colour: RGBColor) -> ShapeStyle {
    colour.stroke_width(2)
}

/// The cumulative distribution of each series' samples (x: value in `unit`, on a log scale so
/// that a long tail leaves the body readable; values ≤ 0 are left out; y: share of samples
/// ≤ x, %), with vertical reference lines.
pub fn cdf(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
    references: &[Reference],
) -> Result<(), PlotError> {
    let positive = |v: &f64| *v > 0.0 && v.is_finite();
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(references.iter().map(|r| r.at))
        .filter(positive)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi {
        (1.0, 10.0)
    } else {
        (lo / 1.2, hi * 1.2)
    };
    canvas(path, |root| {
        let mut chart = chart(root, title, 70, (lo..hi).log_scale(), 0.0..100.0)?;
        draw_mesh(
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc("samples ≤ x (%)"),
        )?;
        for (i, (name, values)) in series.iter().enumerate() {
            let mut sorted: Vec<f64> = values.iter().copied().filter(positive).collect();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len().max(1) as f64;
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(
                    sorted
                        .iter()
                        .enumerate()
                        .map(|(k, &x)| (x, (k + 1) as f64 / n * 100.0)),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{name} (n = {})", sorted.len()))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        for (i, r) in references
            .iter()
            .enumerate()
            .filter(|(_, r)| positive(&r.at))
        {
            let c = colour(series.len() + i);
            chart
                .draw_series(DashedLineSeries::new(
                    [(r.at, 0.0), (r.at, 100.0)],
                    8,
                    5,
                    dashed(c),
                ))
                .map_err(|e| e.to_string())?
                .label(r.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], dashed(c)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Lines with points, x against y, with error bars where a series has `spread`, and
/// horizontal reference lines (or a reference series: give it as a [`Series`] with the word
/// "paper" or "target" in its name and it is drawn dashed; one more than 3× above every
/// measured point is only named in the legend, "off the scale", so that it does not flatten
/// the measurements).
pub fn lines(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series],
    references: &[Reference],
) -> Result<(), PlotError> {
    let xs = span(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        false,
    );
    let is_reference = |s: &Series| s.name.contains("paper") || s.name.contains("target");
    let measured_max = series
        .iter()
        .filter(|s| !is_reference(s))
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    // A reference far above every measurement would flatten them: it keeps its legend entry,
    // marked as off the scale, and is not drawn.
    let off_scale = |s: &Series| {
        is_reference(s) && measured_max > 0.0 && s.points.iter().all(|p| p.1 > 3.0 * measured_max)
    };
    let ys = span(
        series
            .iter()
            .filter(|s| !off_scale(s))
            .flat_map(|s| {
                s.points
                    .iter()
                    .map(|p| p.1)
                    .chain(s.spread.iter().flat_map(|&(lo, hi)| [lo, hi]))
            })
            .chain(references.iter().map(|r| r.at)),
        true,
    );
    canvas(path, |root| {
        let mut chart = chart(root, title, 80, xs.clone(), ys)?;
        draw_mesh(chart.configure_mesh().x_desc(x_label).y_desc(y_label))?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            let reference = is_reference(s);
            if off_scale(s) {
                let top = s.points.iter().map(|p| p.1).fold(0.0, f64::max);
                chart
                    .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                    .map_err(|e| e.to_string())?
                    .label(format!("{} — off the scale (≥ {top:.1})", s.name))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], dashed(c)));
                continue;
            }
            let style = if reference {
                dashed(c)
            } else {
                c.stroke_width(2)
            };
            let drawn = if reference {
                chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 8, 5, style))
            } else {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), style).point_size(4))
            };
            drawn
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
            let cap = (xs.end - xs.start) * 0.006;
            for (&(x, _), &(lo, hi)) in s.points.iter().zip(&s.spread) {
                chart
                    .draw_series([
                        PathElement::new([(x, lo), (x, hi)], c.stroke_width(1)),
                        PathElement::new([(x - cap, lo), (x + cap, lo)], c.stroke_width(1)),
                        PathElement::new([(x - cap, hi), (x + cap, hi)], c.stroke_width(1)),
                    ])
                    .map_err(|e| e.to_string())?;
            }
        }
        for (i, r) in references.iter().enumerate() {
            let c = colour(series.len() + i);
            chart
                .draw_series(DashedLineSeries::new(
                    [(xs.start, r.at), (xs.end, r.at)],
                    8,
                    5,
                    dashed(c),
                ))
                .map_err(|e| e.to_string())?
                .label(r.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], dashed(c)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Grouped bars: one group per category (x), one bar per series, y on a log scale (values
/// ≤ 0 are left out).
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    let positive = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = positive.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi {
        (1.0, 10.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    let groups = categories.len().max(1) as f64;
    let width = 0.8 / series.len().max(1) as f64;
    canvas(path, |root| {
        let mut chart = chart(root, title, 80, 0.0..groups, (lo..hi).log_scale())?;
        let names = categories.to_vec();
        draw_mesh(
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(categories.len().max(1) * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor();
                    if (x - i - 0.5).abs() < 0.01 && i >= 0.0 {
                        names.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc(y_label),
        )?;
        for (s, (name, values)) in series.iter().enumerate() {
            let c = colour(s);
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v > 0.0)
                        .map(|(g, &v)| {
                            let x0 = g as f64 + 0.1 + width * s as f64;
                            Rectangle::new([(x0, lo), (x0 + width * 0.95, v)], c.filled())
                        }),
                )
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}
