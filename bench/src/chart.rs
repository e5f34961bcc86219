//! The ratio bar chart (`bench/ratios.png`): one panel of ratios to the direct path, one of
//! ratios to the faster relay of each scenario, a group of bars per scenario and a bar per
//! path.
//!
//! Text is drawn with plotters' `ab_glyph` backend from a font compiled into the binary
//! (DejaVu Sans, from the `dejavu` crate), so the chart renders on machines without
//! fontconfig or system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::peers::Kind;
use crate::report::times;
use crate::scenarios::{Outcome, Scenario};

const FONT: &str = "sans-serif";
/// Width of the legend column right of each panel, in pixels.
const LEGEND_WIDTH: u32 = 250;
/// Width of one scenario group in x units.
const SPAN: i32 = 1000;

/// Bars of one path across the scenario groups.
struct Series {
    kind: Kind,
    values: Vec<Option<f64>>,
}

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Direct => RGBColor(40, 40, 40),
        Kind::CopyRelay => RGBColor(150, 150, 150),
        Kind::SpliceRelay => RGBColor(100, 100, 100),
        Kind::Egressd => RGBColor(31, 119, 180),
        Kind::EgressdLogOff => RGBColor(90, 160, 210),
        Kind::EgressdJson => RGBColor(60, 90, 200),
        Kind::EgressdPostgres => RGBColor(20, 60, 120),
        Kind::EgressdCopy => RGBColor(140, 190, 225),
        Kind::Squid => RGBColor(255, 127, 14),
        Kind::Tinyproxy => RGBColor(44, 160, 44),
        Kind::TrafficServer => RGBColor(214, 39, 40),
        Kind::Apache => RGBColor(148, 103, 189),
        Kind::G3proxy => RGBColor(140, 86, 75),
    }
}

fn register_font() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow::anyhow!("embedded font rejected"));
    });
    result
}

/// Draws the chart of `outcome`'s throughput ratios to `path`.
pub fn render(outcome: &Outcome, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let scenarios: Vec<Scenario> = outcome.scenarios.iter().map(|(s, _)| *s).collect();
    let kinds: Vec<Kind> = outcome.measured.iter().map(|m| m.kind).collect();
    let to_direct: Vec<Series> = kinds
        .iter()
        .filter(|k| **k != Kind::Direct)
        .map(|&kind| Series {
            kind,
            values: scenarios
                .iter()
                .map(|s| outcome.ratio(*s, kind, Kind::Direct))
                .collect(),
        })
        .collect();
    // The relays' ratios to each other already show in the direct panel.
    let to_relay: Vec<Series> = kinds
        .iter()
        .filter(|k| !k.is_reference())
        .map(|&kind| Series {
            kind,
            values: scenarios
                .iter()
                .map(|s| outcome.ratio_to_relay(*s, kind))
                .collect(),
        })
        .collect();
    let labels: Vec<&str> = scenarios.iter().map(|s| s.label()).collect();

    // Wider with more paths, so each bar keeps room for its label.
    let width = LEGEND_WIDTH + 1200.max(480 + 90 * to_direct.len() as u32);
    let root = BitMapBackend::new(path, (width, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "egressd benchmark: throughput ratios (higher is better; 1.0 = reference)",
        (FONT, 26),
    )?;
    let areas = root.split_evenly((2, 1));
    draw_panel(
        &areas[0],
        "ratio to direct (client straight to upstream)",
        &labels,
        &to_direct,
    )?;
    draw_panel(
        &areas[1],
        "ratio to relay (the faster of the copy and splice TCP forwarders, per scenario)",
        &labels,
        &to_relay,
    )?;
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    labels: &[&str],
    series: &[Series],
) -> anyhow::Result<()> {
    // The legend beside the bars, not over them: with a dozen paths it is as tall as a panel.
    let (width, _) = area.dim_in_pixel();
    let (area, legend) = area.split_horizontally(width.saturating_sub(LEGEND_WIDTH));
    draw_legend(&legend, series)?;
    let groups = labels.len();
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(1.0f64, |a, b| a.max(*b))
        * 1.2;
    // Integer x units (a group is SPAN wide): plotters' label formatter needs a coordinate
    // with default formatting, which f64 with custom key points lacks.
    let centres: Vec<i32> = (0..groups as i32).map(|i| i * SPAN + SPAN / 2).collect();
    let mut chart = ChartBuilder::on(&area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (0..groups as i32 * SPAN).with_key_points(centres),
            0f64..top,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| {
            labels
                .get((*x / SPAN) as usize)
                .map(|l| l.to_string())
                .unwrap_or_default()
        })
        .x_label_style((FONT, 15))
        .y_label_style((FONT, 14))
        .y_desc("ratio")
        .axis_desc_style((FONT, 15))
        .draw()?;

    let slot = SPAN * 8 / 10 / series.len().max(1) as i32;
    let value_style =
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (j, s) in series.iter().enumerate() {
        let fill = color(s.kind);
        let bars: Vec<(i32, i32, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let x0 = i as i32 * SPAN + SPAN / 10 + j as i32 * slot;
                v.map(|v| (x0, x0 + slot * 9 / 10, v))
            })
            .collect();
        chart.draw_series(
            bars.iter()
                .map(|&(x0, x1, v)| Rectangle::new([(x0, 0.0), (x1, v)], fill.filled())),
        )?;
        chart
            .draw_series(bars.iter().map(|&(x0, x1, v)| {
                Text::new(times(v), ((x0 + x1) / 2, v), value_style.clone())
            }))?;
    }
    chart.draw_series(LineSeries::new(
        [(0, 1.0), (groups as i32 * SPAN, 1.0)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

/// A swatch and the name of each path, top to bottom in run order.
fn draw_legend(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    series: &[Series],
) -> anyhow::Result<()> {
    let name_style =
        TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, s) in series.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        area.draw(&Rectangle::new(
            [(12, y - 7), (28, y + 7)],
            color(s.kind).filled(),
        ))?;
        area.draw(&Text::new(s.kind.name(), (36, y), name_style.clone()))?;
    }
    Ok(())
}
