//! The one progress bar every long command shows: training (and before it loading the model,
//! caching latents, making class images), rendering, generating, scoring, pretraining, the
//! judge and model downloads. It counts steps (or images) with the smoothed loss where
//! there is one, the speed, the time spent and the time left. Where stderr is not a
//! terminal (a log file, CI) indicatif hides the bar, so a line names each stage as it starts
//! and a plain line goes out every minute, and notes go straight to stderr.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use moslora::hub::FetchProgress;
use moslora::metrics::ScoreProgress;
use moslora::render::generate::GenerateProgress;
use moslora::render::RenderProgress;
use moslora::toyworld::pretrain::PretrainProgress;
use moslora::train::{AdapterKind, Progress};

/// Seconds between plain lines where the bar is hidden.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(60);

pub struct Bar {
    bar: Option<ProgressBar>,
    /// What the bar counts, singular: `step` or `image`.
    unit: &'static str,
    /// Whether this stage has a loss to show.
    has_loss: bool,
    /// The smoothed loss (steps are noisy).
    loss: Option<f64>,
    /// When the last plain line went out (or the stage started).
    last_line: Instant,
    /// The speed over the units measured in this stage.
    rate: Rate,
    /// Images rendered and images kept from an earlier render, this render.
    rendered: u64,
    kept: u64,
}

/// The speed of a stage, over the units this process measured only: units done before it
/// started (a resumed run's steps) and the time before the first unit of this stage ended
/// (loading, the first step's warm-up) are left out, so the rate never exceeds the time
/// spent, and the time left is the units left at that rate.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// The position and time when the first unit of this stage ended.
    first: Option<(u64, Instant)>,
    /// The latest position and time.
    last: Option<(u64, Instant)>,
}

impl Rate {
    fn new() -> Self {
        Rate {
            first: None,
            last: None,
        }
    }

    /// `pos` units reached at `now`.
    pub fn record(&mut self, pos: u64, now: Instant) {
        match self.first {
            None => self.first = Some((pos, now)),
            Some(_) => self.last = Some((pos, now)),
        }
    }

    /// Seconds per unit over the measured units (after the first), once there are any.
    pub fn seconds_per_unit(&self) -> Option<f64> {
        let ((p0, t0), (p1, t1)) = (self.first?, self.last?);
        (p1 > p0).then(|| t1.duration_since(t0).as_secs_f64() / (p1 - p0) as f64)
    }

    /// "2.01 s/step, about 3 min left" (or only what is known yet).
    pub fn describe(&self, unit: &str, pos: u64, total: u64) -> Option<String> {
        let spu = self.seconds_per_unit()?;
        let rate = if spu >= 1.0 || spu == 0.0 {
            format!("{spu:.2} s/{unit}")
        } else {
            format!("{:.1} {unit}s/s", 1.0 / spu)
        };
        let left = total.saturating_sub(pos) as f64 * spu;
        Some(format!("{rate}, about {} left", duration_words(left)))
    }
}

/// "45 s", "3 min", "1 h 20 min".
fn duration_words(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 90 {
        format!("{s} s")
    } else if s < 90 * 60 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60)
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar {
            bar: None,
            unit: "step",
            has_loss: false,
            loss: None,
            last_line: Instant::now(),
            rate: Rate::new(),
            rendered: 0,
            kept: 0,
        }
    }
}

impl Bar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Images rendered and images kept from an earlier render, by the last render drawn.
    pub fn images(&self) -> (u64, u64) {
        (self.rendered, self.kept)
    }

    /// Starts a bar named `name` over `total` units, `done` of them already done; a bar
    /// still drawn is finished first.
    pub fn begin(&mut self, name: &str, unit: &'static str, total: u64, done: u64, has_loss: bool) {
        self.end();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix:>8}} [{{bar:30}}] {{pos}}/{{len}} {unit}s {{msg}} {{elapsed}} elapsed"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar.set_position(done);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(250));
        if bar.is_hidden() {
            // A log says what each stage is about to do; the plain lines then follow.
            eprintln!("{name}: {total} {unit}s");
        }
        self.bar = Some(bar);
        self.unit = unit;
        self.has_loss = has_loss;
        self.loss = None;
        self.last_line = Instant::now();
        self.rate = Rate::new();
    }

    /// Starts a bar over the `total` bytes of the file `name`.
    fn begin_bytes(&mut self, prefix: &str, name: &str, total: u64) {
        self.end();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {msg} {bytes_per_sec} \
                 {elapsed} elapsed, {eta} left",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_string());
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
        self.unit = "byte";
        self.has_loss = false;
        self.loss = None;
        self.last_line = Instant::now();
    }

    /// Moves the bar to `pos`, with `msg` beside it when given, and the speed measured so far.
    pub fn advance(&mut self, pos: u64, msg: Option<String>) {
        let Some(b) = &self.bar else { return };
        let total = b.length().unwrap_or(0);
        self.rate.record(pos, Instant::now());
        let speed = self.rate.describe(self.unit, pos, total);
        let text = [msg, speed.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        b.set_position(pos);
        b.set_message(text);
        if b.is_hidden() && self.last_line.elapsed() >= PLAIN_LINE_EVERY {
            self.last_line = Instant::now();
            let loss = if self.has_loss {
                format!("loss {:.4}, ", self.loss.unwrap_or(0.0))
            } else {
                String::new()
            };
            eprintln!(
                "{} {} {pos}/{total}: {loss}{}{} s elapsed",
                b.prefix(),
                self.unit,
                speed.map(|s| s + ", ").unwrap_or_default(),
                b.elapsed().as_secs(),
            );
        }
    }

    /// Moves the bar on by one unit.
    pub fn inc(&mut self) {
        let pos = self.bar.as_ref().map_or(0, |b| b.position()) + 1;
        self.advance(pos, None);
    }

    /// Moves the bar to `step` with the smoothed loss beside it.
    fn advance_loss(&mut self, step: u64, smoothed: f64) {
        self.loss = Some(smoothed);
        self.advance(step, Some(format!("loss {smoothed:.4}")));
    }

    /// A line above the bar, or on stderr where there is no bar to draw.
    pub fn say(&self, msg: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    /// Finishes the bar, leaving it drawn.
    pub fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }

    /// Finishes the bar and wipes it.
    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, kind: AdapterKind, total: u64, done: u64) {
        self.begin(kind.label(), "step", total, done, true);
    }
    fn step(&mut self, step: u64, _loss: f32, smoothed: f64) {
        self.advance_loss(step, smoothed);
    }
    fn validation(&mut self, step: u64, loss: f32) {
        self.say(&format!("step {step}: validation loss {loss:.5}"));
    }
    fn note(&mut self, msg: &str) {
        self.say(msg);
    }
    fn finish(&mut self) {
        self.end();
    }
    fn phase(&mut self, name: &str, unit: &'static str, total: u64) {
        self.begin(name, unit, total, 0, false);
    }
    fn phase_step(&mut self, done: u64) {
        self.advance(done, None);
    }
}

impl RenderProgress for Bar {
    fn start(&mut self, total: u64) {
        self.begin("render", "image", total, 0, false);
        (self.rendered, self.kept) = (0, 0);
    }
    fn phase(&mut self, name: &str, unit: &'static str, total: u64) {
        self.begin(name, unit, total, 0, false);
    }
    fn phase_step(&mut self, done: u64) {
        self.advance(done, None);
    }
    fn image(&mut self, done: u64, label: &str, reused: bool) {
        if reused {
            self.kept += 1;
        } else {
            self.rendered += 1;
        }
        let reused = if reused { ", kept" } else { "" };
        self.advance(done, Some(format!("({label}{reused})")));
    }
    fn note(&mut self, msg: &str) {
        self.say(msg);
    }
    fn finish(&mut self) {
        self.clear();
    }
}

impl PretrainProgress for Bar {
    fn stage(&mut self, name: &str, total: u64, done: u64) {
        self.begin(name, "step", total, done, true);
    }
    fn step(&mut self, step: u64, loss: f64) {
        if loss > 0.0 {
            let s = self.loss.map_or(loss, |m| 0.98 * m + 0.02 * loss);
            self.advance_loss(step, s);
        } else {
            self.advance(step, None);
        }
    }
    fn note(&mut self, msg: &str) {
        self.say(msg);
    }
}

impl GenerateProgress for Bar {
    fn note(&mut self, msg: &str) {
        self.say(msg);
    }
    fn step(&mut self, _done: usize) {
        self.inc();
    }
}

impl ScoreProgress for Bar {
    fn note(&mut self, msg: &str) {
        self.say(msg);
    }
    fn start(&mut self, total: u64) {
        self.begin("score", "picture", total, 0, false);
    }
    fn encoded(&mut self, done: u64) {
        self.advance(done, None);
        if self.bar.as_ref().and_then(|b| b.length()) == Some(done) {
            self.clear();
        }
    }
}

impl FetchProgress for Bar {
    fn note(&mut self, msg: &str) {
        self.say(msg);
    }
    fn file(&mut self, name: &str, index: usize, count: usize, size: u64) {
        self.begin_bytes(&format!("{index}/{count}"), name, size);
    }
    fn bytes(&mut self, n: u64) {
        let Some(b) = &self.bar else { return };
        b.inc(n);
        if b.is_hidden() && self.last_line.elapsed() >= PLAIN_LINE_EVERY {
            self.last_line = Instant::now();
            eprintln!(
                "downloading {}: {:.1} of {:.1} MB, {} s elapsed, about {} s left",
                b.message(),
                b.position() as f64 / 1e6,
                b.length().unwrap_or(0) as f64 / 1e6,
                b.elapsed().as_secs(),
                b.eta().as_secs()
            );
        }
    }
    /// Files of a megabyte or more stay on the screen (or get a line in a log); the small
    /// ones (configs, tokenizer settings) go.
    fn file_done(&mut self) {
        if let Some(b) = self.bar.take() {
            if b.position() < 1_000_000 {
                b.finish_and_clear();
            } else if b.is_hidden() {
                eprintln!(
                    "downloaded {} ({:.1} MB)",
                    b.message(),
                    b.position() as f64 / 1e6
                );
            } else {
                b.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_only_measured_units() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut r = Rate::new();
        // A run resumed at step 60 of 100; its first step here ends after 60 s of loading.
        r.record(61, at(60.0));
        assert_eq!(r.seconds_per_unit(), None);
        assert_eq!(r.describe("step", 61, 100), None);
        r.record(62, at(62.0));
        r.record(65, at(67.0));
        // 4 steps in the 7 s since the first ended: 1.75 s each, never more than the time spent.
        let spu = r.seconds_per_unit().unwrap();
        assert!((spu - 1.75).abs() < 1e-9, "{spu}");
        assert_eq!(
            r.describe("step", 65, 100).unwrap(),
            "1.75 s/step, about 61 s left"
        );
        // Fast units read as units per second.
        let mut r = Rate::new();
        r.record(1, at(0.0));
        r.record(21, at(2.0));
        assert_eq!(
            r.describe("image", 21, 100).unwrap(),
            "10.0 images/s, about 8 s left"
        );
        assert_eq!(duration_words(3600.0 * 1.5), "1 h 30 min");
        assert_eq!(duration_words(200.0), "3 min");
    }
}
