//! Line charts for reports, as PNG or SVG (chosen by the file extension).

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
    let size = (960, 540);
    match path.extension().and_then(|extension| extension.to_str()) {
        Some("svg") => draw(SVGBackend::new(path, size).into_drawing_area(), title, x_label, y_label, series),
        Some("png") => {
            draw(BitMapBackend::new(path, size).into_drawing_area(), title, x_label, y_label, series)
        }
        _ => anyhow::bail!("plot file {} must end in .png or .svg", path.display()),
    }
    .with_context(|| format!("could not draw {}", path.display()))
}

fn draw<B: DrawingBackend>(
    area: DrawingArea<B, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()>
where
    B::ErrorType: 'static,
{
    let points = series.iter().flat_map(|line| line.points.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    anyhow::ensure!(x_min <= x_max, "nothing to plot");
    let y_pad = ((y_max - y_min) * 0.05).max(1e-9);
    let x_pad = if x_max > x_min { 0.0 } else { 1.0 };
    area.fill(&WHITE).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min - x_pad)..(x_max + x_pad), (y_min - y_pad)..(y_max + y_pad))
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    for (index, line) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
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
