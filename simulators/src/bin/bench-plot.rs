//! bench-plot: draw the benchmark results as SVG line charts.
//!
//! The runner (benches/run.sh) writes, for each chart, a JSON file of named
//! series of (x, y) points; this turns one into an SVG. Keeping the chart
//! generic keeps what is plotted next to what is measured, in the runner.

use std::path::PathBuf;

use clap::Parser;
use plotters::prelude::*;
use serde::Deserialize;

/// Draw named series of (x, y) points as one line chart.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// {"series": [{"name": "...", "points": [[x, y], ...]}, ...]}
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "")]
    title: String,
    #[arg(long, default_value = "")]
    x_label: String,
    #[arg(long, default_value = "")]
    y_label: String,
    #[arg(long)]
    log_x: bool,
    #[arg(long)]
    log_y: bool,
    /// Mark each point, for series with few points.
    #[arg(long)]
    points: bool,
}

#[derive(Deserialize)]
struct Chart {
    series: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("bench-plot: {e}");
        std::process::exit(1);
    }
}

/// The span of the values, widened so that a single value or a log axis
/// still has a range to draw on.
fn span(values: impl Iterator<Item = f64>, log: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { 0.1..10.0 } else { 0.0..1.0 };
    }
    if log {
        lo / 1.5..hi * 1.5
    } else {
        // Linear axes start at zero (or below it), so heights compare honestly.
        let pad = ((hi - lo.min(0.0)) * 0.05).max(1e-9);
        lo.min(0.0)..hi + pad
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let chart: Chart = serde_json::from_str(&std::fs::read_to_string(&a.input)?)?;
    let xs = span(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
        a.log_x,
    );
    let ys = span(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
        a.log_y,
    );
    let root = SVGBackend::new(&a.out, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&a.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    // The four axis combinations are four types; one macro body draws them all.
    macro_rules! draw {
        ($x:expr, $y:expr) => {{
            let mut c = builder.build_cartesian_2d($x, $y)?;
            c.configure_mesh()
                .x_desc(a.x_label.as_str())
                .y_desc(a.y_label.as_str())
                .draw()?;
            for (i, s) in chart.series.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| (!a.log_x || p.0 > 0.0) && (!a.log_y || p.1 > 0.0))
                    .collect();
                c.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                if a.points {
                    c.draw_series(pts.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
                }
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    match (a.log_x, a.log_y) {
        (false, false) => draw!(xs, ys),
        (true, false) => draw!(xs.log_scale(), ys),
        (false, true) => draw!(xs, ys.log_scale()),
        (true, true) => draw!(xs.log_scale(), ys.log_scale()),
    }
    root.present()?;
    Ok(())
}
