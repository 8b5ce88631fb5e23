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

/// `step,loss,smoothed_loss,learning_rate,grad_norm` per optimizer step (the gradient norm
/// before clipping; `NaN` for steps of a checkpoint made before it was kept). Logs written
/// before the last column was added read the same.
pub fn write_csv(path: &Path, losses: &[f32], lrs: &[f64], grad_norms: &[f32]) -> Result<()> {
    let smoothed = smooth(losses, 0.9);
    let mut text = String::from("step,loss,smoothed_loss,learning_rate,grad_norm\n");
    for (i, l) in losses.iter().enumerate() {
        let lr = lrs.get(i).copied().unwrap_or(f64::NAN);
        let g = grad_norms.get(i).copied().unwrap_or(f32::NAN);
        text.push_str(&format!("{},{l},{:.6},{lr:e},{g}\n", i + 1, smoothed[i]));
    }
    fsutil::write_bytes(path, text.as_bytes())
}

/// `step,validation_loss` per measurement (`train.validate_every`), beside `loss.csv`.
pub fn write_validation_csv(path: &Path, validation: &[(u64, f32)]) -> Result<()> {
    let mut text = String::from("step,validation_loss\n");
    for (step, l) in validation {
        text.push_str(&format!("{step},{l}\n"));
    }
    fsutil::write_bytes(path, text.as_bytes())
}

/// Read back a log written by [`write_validation_csv`]: (step, loss).
pub fn read_validation_csv(path: &Path) -> Result<Vec<(u64, f32)>> {
    let text = fsutil::read_to_string(path)?;
    text.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let step = f.next().and_then(|v| v.parse().ok());
            let loss = f.next().and_then(|v| v.parse().ok());
            step.zip(loss)
                .ok_or_else(|| Error::config(path, format!("malformed validation log line {l:?}")))
        })
        .collect()
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

/// One or more loss curves on one chart: raw losses faint, smoothed losses bold. Curves that
/// lie on top of each other stay apart to the eye: each run has its own colour, line style
/// (solid, dashed, dotted) and marker shape; and with two runs or more a second panel below
/// draws each smoothed curve minus the first run's, so that a difference too small to see on
/// the loss scale still shows (a flat line at zero says the curves are the same).
pub fn plot(path: &Path, title: &str, runs: &[(&str, &[f32])]) -> Result<()> {
    plot_with_validation(path, title, runs, &[])
}

/// [`plot`], with each run's validation losses (step, loss; `validation[i]` is `runs[i]`'s,
/// an empty list for none) drawn over its curve: a bold line in the run's colour through
/// hollow circles.
pub fn plot_with_validation(
    path: &Path,
    title: &str,
    runs: &[(&str, &[f32])],
    validation: &[&[(u64, f32)]],
) -> Result<()> {
    register_font();
    let last_validated = validation
        .iter()
        .flat_map(|v| v.iter().map(|(s, _)| *s as usize))
        .max()
        .unwrap_or(0);
    let steps = runs
        .iter()
        .map(|(_, l)| l.len())
        .max()
        .unwrap_or(0)
        .max(last_validated)
        .max(2);
    let finite = runs
        .iter()
        .flat_map(|(_, l)| l.iter())
        .copied()
        .chain(validation.iter().flat_map(|v| v.iter().map(|(_, l)| *l)))
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
        RGBColor(255, 127, 14),
    ];
    let smoothed: Vec<Vec<f64>> = runs.iter().map(|(_, l)| smooth(l, 0.95)).collect();
    // Markers on the smoothed curves, about a dozen per curve, offset per run so that two
    // curves on one line still show both.
    let every = (steps / 12).max(1);
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("drawing {}: {e}", path.display()));
    let with_diff = runs.len() >= 2;
    let (w, h) = (900u32, if with_diff { 700u32 } else { 500u32 });
    // Drawn in memory and written by fsutil, so a full disk is reported like any other write.
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (top, bottom) = if with_diff {
            let (t, b) = root.split_vertically(500);
            (t, Some(b))
        } else {
            (root.clone(), None)
        };
        let x0 = if last_validated > 0 && validation.iter().any(|v| v.iter().any(|(s, _)| *s == 0))
        {
            0f64
        } else {
            1f64
        };
        let mut chart = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..steps as f64, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .x_label_formatter(&|x| format!("{}", *x as i64))
            .y_desc(if validation.iter().any(|v| !v.is_empty()) {
                "loss (MSE): training, and validation in bold"
            } else {
                "training loss (MSE)"
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, losses)) in runs.iter().enumerate() {
            let c = colours[i % colours.len()];
            let raw = losses.iter().enumerate().filter(|(_, v)| v.is_finite());
            chart
                .draw_series(LineSeries::new(
                    raw.map(|(s, &v)| ((s + 1) as f64, v as f64)),
                    c.mix(0.2),
                ))
                .map_err(|e| err(&e))?;
            let points: Vec<(f64, f64)> = smoothed[i]
                .iter()
                .enumerate()
                .map(|(s, &v)| ((s + 1) as f64, v))
                .collect();
            draw_styled(&mut chart, &points, i, c).map_err(|e| err(&e))?;
            let marks = points
                .iter()
                .skip((i * every / runs.len().max(1)).min(points.len()))
                .step_by(every)
                .copied();
            chart
                .draw_series(marks.map(|p| {
                    EmptyElement::at(p) + Polygon::new(marker_points(i, 8, 0), c.filled())
                }))
                .map_err(|e| err(&e))?
                .label(format!("{name} (smoothed)"))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(2))
                        + Polygon::new(marker_points(i, 8, 12), c.filled())
                });
        }
        for (i, (name, v)) in runs.iter().map(|(n, _)| n).zip(validation).enumerate() {
            if v.is_empty() {
                continue;
            }
            let c = colours[i % colours.len()];
            let points: Vec<(f64, f64)> = v
                .iter()
                .filter(|(_, l)| l.is_finite())
                .map(|&(s, l)| (s as f64, l as f64))
                .collect();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(3)))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, 5, ShapeStyle::from(&WHITE).filled())),
                )
                .map_err(|e| err(&e))?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 5, c.stroke_width(2))))
                .map_err(|e| err(&e))?
                .label(format!("{name} validation"))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(3))
                        + Circle::new((12, 0), 5, c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        if let Some(bottom) = bottom {
            let diffs: Vec<Vec<(f64, f64)>> = smoothed[1..]
                .iter()
                .map(|sm| {
                    sm.iter()
                        .zip(&smoothed[0])
                        .enumerate()
                        .filter(|(_, (a, b))| a.is_finite() && b.is_finite())
                        .map(|(s, (a, b))| ((s + 1) as f64, a - b))
                        .collect()
                })
                .collect();
            let m = diffs
                .iter()
                .flatten()
                .fold(0f64, |m, (_, d)| m.max(d.abs()))
                .max(1e-6)
                * 1.1;
            // Enough decimals that the axis's labels differ: the two runs' smoothed losses often
            // part by less than 0.001.
            let decimals = ((-m.log10()).ceil() as i64 + 1).clamp(3, 8) as usize;
            let mut diff = ChartBuilder::on(&bottom)
                .caption(
                    format!("smoothed loss minus {}'s", runs[0].0),
                    ("sans-serif", 16),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(1f64..steps as f64, -m..m)
                .map_err(|e| err(&e))?;
            diff.configure_mesh()
                .x_desc("optimizer step")
                .x_label_formatter(&|x| format!("{}", *x as i64))
                .y_label_formatter(&|y| format!("{y:+.decimals$}"))
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| err(&e))?;
            diff.draw_series(LineSeries::new(
                vec![(1.0, 0.0), (steps as f64, 0.0)],
                colours[0].stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
            for (j, d) in diffs.iter().enumerate() {
                let i = j + 1;
                draw_styled(&mut diff, d, i, colours[i % colours.len()]).map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).expect("the buffer is w x h x 3");
    fsutil::write_png(path, &img, &[])
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Run `i`'s line: solid, dashed, dotted, then dashed again.
fn draw_styled(
    chart: &mut Chart<'_, '_>,
    points: &[(f64, f64)],
    i: usize,
    c: RGBColor,
) -> std::result::Result<(), String> {
    let style = c.stroke_width(2);
    let r = match i % 3 {
        0 => chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map(|_| ()),
        1 => chart
            .draw_series(DashedLineSeries::new(points.iter().copied(), 10, 6, style))
            .map(|_| ()),
        _ => chart
            .draw_series(DashedLineSeries::new(points.iter().copied(), 3, 4, style))
            .map(|_| ()),
    };
    r.map_err(|e| e.to_string())
}

/// Run `i`'s marker, as offsets in pixels around its point: an octagon (a round dot), a
/// triangle, a square, a diamond.
fn marker_points(i: usize, size: i32, shift: i32) -> Vec<(i32, i32)> {
    let h = size / 2;
    let v: Vec<(i32, i32)> = match i % 4 {
        0 => (0..8)
            .map(|k| {
                let a = std::f64::consts::PI * (k as f64 + 0.5) / 4.0;
                (
                    (a.cos() * h as f64).round() as i32,
                    (a.sin() * h as f64).round() as i32,
                )
            })
            .collect(),
        1 => vec![(0, -h - 1), (h + 1, h), (-h - 1, h)],
        2 => vec![(-h, -h), (h, -h), (h, h), (-h, h)],
        _ => vec![(0, -h - 1), (h + 1, 0), (0, h + 1), (-h - 1, 0)],
    };
    v.into_iter().map(|(x, y)| (x + shift, y)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs with the very same losses: the second (red, dashed, triangles) still shows,
    /// and the difference panel is drawn.
    #[test]
    fn identical_curves_both_show() {
        let dir = std::env::temp_dir().join(format!("moslora-loss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loss.png");
        let losses: Vec<f32> = (0..200)
            .map(|i| 0.2 + 0.1 * (i as f32 * 0.3).sin())
            .collect();
        plot(&path, "t", &[("LoRA", &losses), ("MoSLoRA", &losses)]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 700));
        let count = |want: [u8; 3], rows: std::ops::Range<u32>| {
            rows.flat_map(|y| (0..900).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == want)
                .count()
        };
        let (blue, red) = ([31, 119, 180], [214, 39, 40]);
        assert!(count(red, 0..500) > 200, "the second run is hidden");
        assert!(count(blue, 0..500) > 200, "the first run is hidden");
        // The difference panel: the zero line in the first run's colour, the second run's
        // (identical, so also at zero) dashed over it.
        assert!(count(blue, 500..700) > 100);
        assert!(count(red, 500..700) > 50);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
