//! `quorumkv bench --report DIR`: each run's summary as a picture, so a
//! regression is seen at a glance rather than read out of a table.
//!
//! Per run, `DIR/<scenario>.svg` holds three panels: throughput per
//! second, p50/p99/max per second (a stall or a background burst shows as a
//! spike at its second), and the run's latency percentile curve (an HDR
//! percentile plot: the x axis is "nines", so the tail gets the room).
//! `DIR/<scenario>.json` keeps the summary, and after every run
//! `DIR/index.html` (a table and every picture) and `DIR/percentiles.svg`
//! (every run's curve on one plot) are redrawn from all the JSON files in
//! `DIR`, in the order the runs were made. Plotted with `plotters` (SVG
//! backend only: text is left to the browser, no font library is linked).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::Summary;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("drawing the report: {0}")]
    Draw(String),
    #[error("summary {path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io { path: path.to_path_buf(), source }
}

fn draw<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Draw(e.to_string())
}

/// One figure of a second of the timeline.
type SecondValue = fn(&super::report::Second) -> f64;

/// The highest percentile the curves show: 99.999 % (five nines).
const NINES: f64 = 5.0;

/// A percentile as "nines": 90 % → 1, 99 % → 2, 99.9 % → 3.
fn nines(percentile: f64) -> f64 {
    (-(1.0 - percentile / 100.0).max(10f64.powf(-NINES)).log10()).clamp(0.0, NINES)
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 - 100.0 / 10f64.powf(*x);
    if p <= 0.0 { "0%".into() } else { format!("{p}%") }
}

/// A file name for a scenario (its name may hold spaces, '/' or '=').
fn file_stem(scenario: &str) -> String {
    scenario.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect()
}

/// The three panels of one run.
pub fn run_svg(summary: &Summary) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 960)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let panels = root.split_evenly((3, 1));
        let timeline = &summary.timeline;
        let seconds = timeline.last().map(|s| s.t_s + 1).unwrap_or(1) as f64;
        let top_ops = timeline.iter().map(|s| s.ops).max().unwrap_or(1) as f64;
        let mut chart = ChartBuilder::on(&panels[0])
            .caption(
                format!("{} ({}): {:.0} ops/s", summary.scenario, summary.consistency, summary.ops_per_sec),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..seconds, 0f64..top_ops * 1.1)
            .map_err(draw)?;
        chart.configure_mesh().x_desc("seconds into the run").y_desc("requests/s").draw().map_err(draw)?;
        chart
            .draw_series(LineSeries::new(timeline.iter().map(|s| (s.t_s as f64 + 0.5, s.ops as f64)), &BLUE))
            .map_err(draw)?;

        let top_ms = timeline.iter().map(|s| s.max_ms).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("latency per second (ms, log scale)", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..seconds, (0.05f64..top_ms * 1.5).log_scale())
            .map_err(draw)?;
        chart.configure_mesh().x_desc("seconds into the run").y_desc("ms").draw().map_err(draw)?;
        let series: [(&str, RGBColor, SecondValue); 3] =
            [("p50", GREEN, |s| s.p50_ms), ("p99", RED, |s| s.p99_ms), ("max", BLACK, |s| s.max_ms)];
        for (name, color, value) in series {
            chart
                .draw_series(LineSeries::new(
                    timeline.iter().map(|s| (s.t_s as f64 + 0.5, value(s).max(0.05))),
                    &color,
                ))
                .map_err(draw)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(draw)?;

        percentile_chart(&panels[2], "latency by percentile (HDR)", &[summary])?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// The percentile curves of `runs` on one chart.
fn percentile_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    runs: &[&Summary],
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    let top_ms = runs.iter().flat_map(|r| r.percentiles.iter().map(|(_, ms)| *ms)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..NINES, (0.05f64..top_ms * 1.5).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("ms")
        .draw()
        .map_err(draw)?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                run.percentiles.iter().map(|(p, ms)| (nines(*p), ms.max(0.05))),
                color.stroke_width(2),
            ))
            .map_err(draw)?
            .label(run.scenario.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw)?;
    Ok(())
}

/// Every run's percentile curve on one plot.
pub fn overlay_svg(runs: &[&Summary]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        percentile_chart(&root, "latency by percentile, every run", runs)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// The index page: the table of every run, the overlay, then each run's picture.
fn index_html(runs: &[(String, Summary)]) -> String {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut rows = String::new();
    for (stem, r) in runs {
        let l = &r.latency;
        rows.push_str(&format!(
            "<tr><td><a href=\"#{stem}\">{}</a></td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td><td>{}</td></tr>\n",
            escape(&r.scenario),
            escape(&r.consistency),
            r.ops_per_sec,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            r.errors
        ));
    }
    let mut pictures = String::new();
    for (stem, r) in runs {
        pictures.push_str(&format!(
            "<h2 id=\"{stem}\">{}</h2>\n<img src=\"{stem}.svg\" alt=\"{}\">\n",
            escape(&r.scenario),
            escape(&r.scenario)
        ));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>quorumkv bench report</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style></head>\n<body><h1>quorumkv bench report</h1>\n<table><tr><th>scenario</th><th>consistency</th><th>ops/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>errors</th></tr>\n{rows}</table>\n<h2>Every run's latency by percentile</h2>\n<img src=\"percentiles.svg\" alt=\"percentile curves\">\n{pictures}</body></html>\n"
    )
}

/// Writes this run's picture and summary into `dir`, then redraws the
/// index and the overlay from every summary there.
pub fn write_report(dir: &Path, summary: &Summary) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let stem = file_stem(&summary.scenario);
    let json_path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_vec(summary)
        .map_err(|source| ReportError::Json { path: json_path.clone(), source })?;
    std::fs::write(&json_path, json).map_err(io(&json_path))?;
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, run_svg(summary)?).map_err(io(&svg_path))?;

    let mut runs: Vec<(std::time::SystemTime, String, Summary)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let Ok(run) = serde_json::from_slice::<Summary>(&bytes) else { continue };
        let made = std::fs::metadata(&path).and_then(|m| m.modified()).map_err(io(&path))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        runs.push((made, stem, run));
    }
    runs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let runs: Vec<(String, Summary)> = runs.into_iter().map(|(_, stem, run)| (stem, run)).collect();
    let all: Vec<&Summary> = runs.iter().map(|(_, r)| r).collect();
    let overlay = dir.join("percentiles.svg");
    std::fs::write(&overlay, overlay_svg(&all)?).map_err(io(&overlay))?;
    let index = dir.join("index.html");
    std::fs::write(&index, index_html(&runs)).map_err(io(&index))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{Tally, percentile_curve};
    use std::time::Duration;

    fn summary(name: &str, tally: &Tally) -> Summary {
        let json = serde_json::json!({
            "scenario": name, "workload": "put", "nodes": 3, "concurrency": 4, "protocol": "http1",
            "value_size": "1024", "keys": 10, "distribution": "uniform", "consistency": "W=2",
            "open_loop_rate": null, "key_prefix": "k", "elapsed_s": 3.0, "ops": tally.ops(),
            "ops_per_sec": 100.0,
            "latency": Summary::latency_of(&tally.latency_us),
            "statuses": {}, "transport_errors": 0, "errors": 0, "max_errors": 0, "passed": true,
            "reads_with_siblings": 0, "max_siblings": 0, "bytes_sent": 0, "bytes_received": 0,
            "timeline": tally.timeline(), "percentiles": percentile_curve(&tally.latency_us),
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn nines_put_the_tail_on_the_right() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), NINES);
        assert_eq!(nines_label(&2.0), "99%");
    }

    #[test]
    fn a_report_holds_every_run_with_its_curves() {
        let mut fast = Tally::new();
        let mut slow = Tally::new();
        for i in 0..2000u64 {
            fast.record(Duration::from_micros(500 + i % 100));
            slow.record(Duration::from_micros(5_000 + (i % 100) * 100));
        }
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &summary("put-w2 (W=2)", &fast)).unwrap();
        let index = write_report(dir.path(), &summary("get-r2", &slow)).unwrap();
        let html = std::fs::read_to_string(index).unwrap();
        assert!(html.contains("put-w2 (W=2)") && html.contains("get-r2"), "{html}");
        assert!(html.contains("src=\"put-w2--W-2-.svg\""), "{html}");
        let svg = std::fs::read_to_string(dir.path().join("put-w2--W-2-.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{}", &svg[..200.min(svg.len())]);
        assert!(svg.contains("requests/s") && svg.contains("99.9%"), "axes are labelled");
        let overlay = std::fs::read_to_string(dir.path().join("percentiles.svg")).unwrap();
        // Legend entries: the only place a run's name is written in the overlay.
        assert!(overlay.contains("put-w2 (W=2)") && overlay.contains("get-r2"), "a labelled curve per run");
    }

    #[test]
    fn the_timeline_counts_each_second_and_its_tail() {
        let mut t = Tally::new();
        for _ in 0..99 {
            t.record(Duration::from_millis(1));
        }
        t.record(Duration::from_millis(40));
        let timeline = t.timeline();
        assert_eq!(timeline.len(), 1, "all within the first second");
        assert_eq!(timeline[0].ops, 100);
        assert_eq!(timeline[0].p50_ms, 1.0);
        assert_eq!(timeline[0].max_ms, 40.0);
        let curve = percentile_curve(&t.latency_us);
        assert!(curve.first().unwrap().1 <= 1.01 && curve.last().unwrap().1 >= 39.9, "{curve:?}");
    }
}
