//! `--svg`: each backend's share of the picks over the run, one chart per algorithm, and the
//! latency distribution (CDF) of every algorithm on one chart, drawn with plotters' SVG
//! backend.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

/// Colours of successive series (backends, or algorithms).
const PALETTE: [RGBColor; 10] = [
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
];

/// Backends drawn per share chart (the first ones); more would be unreadable.
const MAX_LINES: usize = 10;

/// Draws `report` (run with series kept) into the SVG file `path`.
pub fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let charts = report.algorithms.len() + 1;
    let (width, row) = (900u32, 300u32);
    let root = SVGBackend::new(path, (width, row * charts as u32)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let areas = root.split_evenly((charts, 1));
    for (area, algorithm) in areas.iter().zip(&report.algorithms) {
        let Some(series) = &algorithm.series else { continue };
        let windows = series.picks.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: share of each window of {} requests", algorithm.name, series.window),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..(windows as f64 * series.window as f64), 0f64..100f64)
            .map_err(e)?;
        chart.configure_mesh().x_desc("request").y_desc("% of picks").draw().map_err(e)?;
        for (b, backend) in algorithm.backends.iter().enumerate().take(MAX_LINES) {
            let color = PALETTE[b % PALETTE.len()];
            let points = series.picks.iter().enumerate().map(|(w, counts)| {
                let total: u32 = counts.iter().sum();
                let share = if total > 0 { f64::from(counts[b]) * 100.0 / f64::from(total) } else { 0.0 };
                ((w as f64 + 0.5) * series.window as f64, share)
            });
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(e)?
                .label(backend.id.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
    }
    let last = &areas[charts - 1];
    let slowest = report
        .algorithms
        .iter()
        .filter_map(|a| a.series.as_ref())
        .filter_map(|s| s.latency_cdf.last().map(|p| p.0))
        .max()
        .unwrap_or(1) as f64
        / 1e6;
    let mut chart = ChartBuilder::on(last)
        .caption("latency distribution (CDF)", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..slowest.max(0.001), 0f64..1f64)
        .map_err(e)?;
    chart.configure_mesh().x_desc("ms").y_desc("share of requests").draw().map_err(e)?;
    for (i, algorithm) in report.algorithms.iter().enumerate() {
        let Some(series) = &algorithm.series else { continue };
        let color = PALETTE[i % PALETTE.len()];
        let points = series.latency_cdf.iter().map(|&(ns, q)| (ns as f64 / 1e6, q));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(e)?
            .label(algorithm.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}
