//! Charts for reports (lines, measured points, bars), as PNG or SVG (chosen
//! by the file extension).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` on one chart and writes it to `path` (`.png` or `.svg`).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    chart(path, &Chart { title, x_label, y_label, lines: series, markers: &[], log_x: false })
}

/// A chart of lines and of marked points (measurements beside the curves
/// fitted to them).
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub lines: &'a [Series],
    /// Drawn as dots: black, then blue, magenta and cyan, then the palette.
    pub markers: &'a [Series],
    /// A logarithmic x axis (all x must be positive).
    pub log_x: bool,
}

/// Draws `chart` and writes it to `path` (`.png` or `.svg`).
pub fn chart(path: &Path, chart: &Chart) -> anyhow::Result<()> {
    let size = (960, 540);
    match path.extension().and_then(|extension| extension.to_str()) {
        Some("svg") => draw(SVGBackend::new(path, size).into_drawing_area(), chart),
        Some("png") => draw(BitMapBackend::new(path, size).into_drawing_area(), chart),
        _ => anyhow::bail!("plot file {} must end in .png or .svg", path.display()),
    }
    .with_context(|| format!("could not draw {}", path.display()))
}

fn draw<B: DrawingBackend>(area: DrawingArea<B, plotters::coord::Shift>, spec: &Chart) -> anyhow::Result<()>
where
    B::ErrorType: 'static,
{
    // A log axis is drawn as a linear axis of log10 x, labelled with x.
    let x_of = |x: f64| if spec.log_x { x.log10() } else { x };
    if spec.log_x {
        let all = spec.lines.iter().chain(spec.markers).flat_map(|line| line.points.iter());
        anyhow::ensure!(all.clone().all(|&(x, _)| x > 0.0), "a logarithmic axis needs positive x");
    }
    let points = spec.lines.iter().chain(spec.markers).flat_map(|line| line.points.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_min = x_min.min(x_of(x));
        x_max = x_max.max(x_of(x));
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    anyhow::ensure!(x_min <= x_max, "nothing to plot");
    let y_pad = ((y_max - y_min) * 0.05).max(1e-9);
    let x_pad = if x_max > x_min { 0.0 } else { 1.0 };
    area.fill(&WHITE).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut chart = ChartBuilder::on(&area)
        .caption(spec.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min - x_pad)..(x_max + x_pad), (y_min - y_pad)..(y_max + y_pad))
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let log_label = |x: &f64| {
        let value = 10f64.powf(*x);
        if value >= 1e4 { format!("{value:.1e}") } else { format!("{value:.0}") }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(spec.x_label).y_desc(spec.y_label);
    if spec.log_x {
        mesh.x_label_formatter(&log_label);
    }
    mesh.draw().map_err(|error| anyhow::anyhow!("{error}"))?;
    for (index, line) in spec.lines.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let points = line.points.iter().map(|&(x, y)| (x_of(x), y));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    for (index, dots) in spec.markers.iter().enumerate() {
        let color = match [BLACK, BLUE, MAGENTA, CYAN].get(index) {
            Some(color) => color.to_rgba(),
            None => Palette99::pick(index).to_rgba(),
        };
        let points = dots.points.iter().map(|&(x, y)| Circle::new((x_of(x), y), 3, color.filled()));
        chart
            .draw_series(points)
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .label(dots.name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    area.present().map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(())
}

/// One named series of bars, a value per category.
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
}

/// Draws grouped bars (one group per category, one bar per series) and
/// writes them to `path` (`.png` or `.svg`).
pub fn bar_chart(
    path: &Path,
    title: &str,
    categories: &[String],
    y_label: &str,
    series: &[Bars],
) -> anyhow::Result<()> {
    let size = (1200, 540);
    match path.extension().and_then(|extension| extension.to_str()) {
        Some("svg") => {
            draw_bars(SVGBackend::new(path, size).into_drawing_area(), title, categories, y_label, series)
        }
        Some("png") => {
            draw_bars(BitMapBackend::new(path, size).into_drawing_area(), title, categories, y_label, series)
        }
        _ => anyhow::bail!("plot file {} must end in .png or .svg", path.display()),
    }
    .with_context(|| format!("could not draw {}", path.display()))
}

fn draw_bars<B: DrawingBackend>(
    area: DrawingArea<B, plotters::coord::Shift>,
    title: &str,
    categories: &[String],
    y_label: &str,
    series: &[Bars],
) -> anyhow::Result<()>
where
    B::ErrorType: 'static,
{
    anyhow::ensure!(!categories.is_empty() && !series.is_empty(), "nothing to plot");
    let values = series.iter().flat_map(|bars| bars.values.iter().copied());
    let (y_min, y_max) =
        values.fold((f64::MAX, f64::MIN), |(low, high), value| (low.min(value), high.max(value)));
    let pad = ((y_max - y_min) * 0.3).max(0.5);
    let (y_low, y_high) = ((y_min - pad).max(0.0), y_max + pad);
    let plot_error = |error: DrawingAreaErrorKind<B::ErrorType>| anyhow::anyhow!("{error}");
    area.fill(&WHITE).map_err(plot_error)?;
    let count = categories.len();
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..count as f64, y_low..y_high)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count * 2 + 1)
        .x_label_formatter(&|x| {
            let index = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && index < count {
                categories[index].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()
        .map_err(plot_error)?;
    let width = 0.8 / series.len() as f64;
    for (position, bars) in series.iter().enumerate() {
        let color = Palette99::pick(position).to_rgba();
        chart
            .draw_series(bars.values.iter().enumerate().map(|(index, &value)| {
                let left = index as f64 + 0.1 + position as f64 * width;
                Rectangle::new([(left, y_low), (left + width * 0.95, value)], color.filled())
            }))
            .map_err(plot_error)?
            .label(bars.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    area.present().map_err(plot_error)?;
    Ok(())
}
