//! The loss log (CSV) and loss-curve pictures.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Register the bundled font for plotters' text (no system fonts needed).
pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Exponential moving average with bias correction, the smoothing of the progress bar and
/// the curves.
pub fn smooth(values: &[f32], beta: f64) -> Vec<f64> {
    let mut avg = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            avg = beta * avg + (1.0 - beta) * v as f64;
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// `step,loss,smoothed_loss,learning_rate` per optimizer step.
pub fn write_csv(path: &Path, losses: &[f32], lrs: &[f64]) -> Result<()> {
    let smoothed = smooth(losses, 0.9);
    let mut text = String::from("step,loss,smoothed_loss,learning_rate\n");
    for (i, l) in losses.iter().enumerate() {
        let lr = lrs.get(i).copied().unwrap_or(f64::NAN);
        text.push_str(&format!("{},{l},{:.6},{lr:e}\n", i + 1, smoothed[i]));
    }
    fsutil::write_bytes(path, text.as_bytes())
}

/// Read back the `loss` column of a log written by `write_csv`.
pub fn read_csv(path: &Path) -> Result<Vec<f32>> {
    let text = fsutil::read_to_string(path)?;
    text.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::config(path, format!("malformed loss log line {l:?}")))
        })
        .collect()
}

/// One or more loss curves on one chart: raw losses faint, smoothed losses bold.
pub fn plot(path: &Path, title: &str, runs: &[(&str, &[f32])]) -> Result<()> {
    register_font();
    let steps = runs.iter().map(|(_, l)| l.len()).max().unwrap_or(0).max(2);
    let finite = runs
        .iter()
        .flat_map(|(_, l)| l.iter())
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo <= hi {
        (lo as f64, hi as f64)
    } else {
        (0.0, 1.0)
    };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("drawing {}: {e}", path.display()));
    let (w, h) = (900u32, 500u32);
    // Drawn in memory and written by fsutil, so a full disk is reported like any other write.
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(1f64..steps as f64, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .x_label_formatter(&|x| format!("{}", *x as i64))
            .y_desc("training loss (MSE)")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, losses)) in runs.iter().enumerate() {
            let c = colours[i % colours.len()];
            let raw = losses.iter().enumerate().filter(|(_, v)| v.is_finite());
            chart
                .draw_series(LineSeries::new(
                    raw.map(|(s, &v)| ((s + 1) as f64, v as f64)),
                    c.mix(0.25),
                ))
                .map_err(|e| err(&e))?;
            let sm = smooth(losses, 0.95);
            chart
                .draw_series(LineSeries::new(
                    sm.iter().enumerate().map(|(s, &v)| ((s + 1) as f64, v)),
                    c.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(format!("{name} (smoothed)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).expect("the buffer is w x h x 3");
    fsutil::write_png(path, &img, &[])
}
