//! What each sampler buys on the toy model: for every sampler at 10, 15, 20, 25, 30 and 50
//! steps, the toy judge's CLIP-T (render vs its prompt) and CLIP-I (render vs the 200-step
//! Euler render of the same prompt and noise), the mean pixel distance to that 200-step
//! render, the UNet evaluations and the render time (median seconds per image). A 200-step
//! DPM++ 2M Karras render of the same noise says how far the reference itself is from
//! converged.
//!
//!     cargo run --release --example samplers -- OUT_DIR [PROMPTS] [SEEDS]
//!     cargo run --release --example samplers -- --chart OUT_DIR   (redraw from samplers.json)
//!
//! PROMPTS (default 8) of the toy world's scenes and SEEDS (default 0,1,2) are rendered with
//! guidance 5 at the model's native size. Every picture's renders (the reference and each
//! sampler at each step count) run one after another, so a change in the machine's load
//! falls on all settings alike. Writes OUT_DIR/samplers.json, samplers.md (the table) and
//! samplers.png (the chart).

use std::path::{Path, PathBuf};
use std::time::Instant;

use moslora::metrics::{clip_image_embeds, clip_text_embeds, cosine, TIE_MARGIN};
use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::encoders::load_clip;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{Denoiser, GenerateOptions, RunOptions, TextEncoders};
use moslora::{Error, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

const STEPS: [usize; 6] = [10, 15, 20, 25, 30, 50];
const REFERENCE_STEPS: usize = 200;
const GUIDANCE: f64 = 5.0;
const PROMPTS: [&str; 8] = [
    "a photo of a red ball on the beach",
    "a photo of a blue box in the snow",
    "a photo of a green tree at night",
    "a photo of a yellow house with a city in the background",
    "a photo of a purple ball in the jungle",
    "a photo of a white box on top of green grass",
    "a photo of a orange tree floating on top of water",
    "a photo of a pink house on top of a wooden floor",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    sampler: String,
    display_name: String,
    steps: usize,
    unet_evaluations: usize,
    clip_t: f64,
    clip_i: f64,
    pixel_distance: f64,
    seconds_per_image: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    judge: String,
    prompts: Vec<String>,
    seeds: Vec<u64>,
    guidance: f64,
    size: i64,
    reference: String,
    reference_clip_t: f64,
    /// Mean pixel distance between the 200-step Euler render and a 200-step DPM++ 2M Karras
    /// render of the same noise: how far the reference itself is from converged.
    reference_floor: f64,
    rows: Vec<Row>,
    /// Per sampler: the fewest steps whose numbers all match 50-step Euler's.
    matches_euler_50: Vec<(String, Option<usize>)>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The median: one render slowed by the machine's other work does not move it.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A mean pixel distance under this (one level of 255) is the same picture, as the pipeline
/// parity tests have it.
const SAME_PICTURE: f64 = 1.0;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--chart") {
        let out = PathBuf::from(args.get(2).expect("usage: samplers --chart OUT_DIR"));
        let path = out.join("samplers.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::msg(format!("{e}")))?;
        let rows: Vec<Row> = serde_json::from_value(v["rows"].clone())
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        return chart(&out.join("samplers.png"), &rows);
    }
    let out = PathBuf::from(
        args.get(1)
            .expect("usage: samplers OUT_DIR [PROMPTS] [SEEDS]"),
    );
    let n_prompts: usize = args.get(2).map_or(8, |s| s.parse().expect("PROMPTS"));
    let seeds: Vec<u64> = args.get(3).map_or(vec![0, 1, 2], |s| {
        s.split(',').map(|x| x.parse().expect("SEEDS")).collect()
    });
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("assets/toy-model");
    let judge_dir = root.join("assets/toy-judge");
    let prompts: Vec<&str> = PROMPTS[..n_prompts].to_vec();

    let dir = ModelDir::open(&model)?;
    let opts = RunOptions::default();
    let size = dir.unet_config()?.sample_size * dir.vae_config()?.scale_factor();
    let text = TextEncoders::load(&dir, opts)?;
    let embeds: Vec<_> = prompts
        .iter()
        .map(|p| {
            let cond = text.encode(p)?;
            let uncond = text.encode_negative(None, &cond)?;
            Ok((cond, uncond))
        })
        .collect::<Result<_>>()?;
    drop(text);
    let den = Denoiser::load(&dir, opts)?;
    let judge = load_clip(&judge_dir, Device::Cpu)?;
    let texts: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
    let text_emb = clip_text_embeds(&judge, &texts)?;

    let settings: Vec<(SamplerKind, usize)> = SamplerKind::ALL
        .iter()
        .flat_map(|&k| STEPS.iter().map(move |&n| (k, n)))
        .collect();
    // Per setting: per picture (clip_t, clip_i, pixel distance, seconds).
    let mut per: Vec<Vec<[f64; 4]>> = vec![Vec::new(); settings.len()];
    let mut evaluations = vec![0usize; settings.len()];
    let mut ref_clip_t = Vec::new();
    let mut floor = Vec::new();
    let render =
        |kind: SamplerKind, steps: usize, pi: usize, seed: u64| -> Result<(Tensor, f64, usize)> {
            let o = GenerateOptions {
                steps,
                guidance: GUIDANCE,
                width: size,
                height: size,
                seed,
                sampler: kind,
            };
            let (cond, uncond) = &embeds[pi];
            let noise = den.initial_noise(seed, size, size)?;
            let mut calls = 0;
            let t0 = Instant::now();
            let latents = den.sample(cond, uncond, &noise, &o, |_| calls += 1)?;
            let rgb = den.decode(&latents);
            Ok((rgb, t0.elapsed().as_secs_f64(), calls))
        };
    let to_image = |rgb: &Tensor| -> Result<image::DynamicImage> {
        Ok(image::DynamicImage::ImageRgb8(
            moslora::sdxl::image_processing::rgb_image(rgb)?,
        ))
    };
    let total = prompts.len() * seeds.len();
    let started = Instant::now();
    for (pi, _) in prompts.iter().enumerate() {
        for &seed in &seeds {
            let (reference, _, _) = render(SamplerKind::Euler, REFERENCE_STEPS, pi, seed)?;
            let ref_img = to_image(&reference)?;
            let ref_emb = clip_image_embeds(&judge, std::slice::from_ref(&ref_img));
            let t_emb = text_emb.get(pi as i64).unsqueeze(0);
            ref_clip_t.push(cosine(&ref_emb, &t_emb)[0]);
            let reference = reference.to_kind(Kind::Float);
            let (other, _, _) = render(SamplerKind::Dpmpp2mKarras, REFERENCE_STEPS, pi, seed)?;
            floor.push(
                (other.to_kind(Kind::Float) - &reference)
                    .abs()
                    .mean(Kind::Double)
                    .double_value(&[]),
            );
            for (si, &(kind, steps)) in settings.iter().enumerate() {
                let (rgb, secs, calls) = render(kind, steps, pi, seed)?;
                let img = to_image(&rgb)?;
                let emb = clip_image_embeds(&judge, std::slice::from_ref(&img));
                let clip_t = cosine(&emb, &t_emb)[0];
                let clip_i = cosine(&emb, &ref_emb)[0];
                let dist = (rgb.to_kind(Kind::Float) - &reference)
                    .abs()
                    .mean(Kind::Double)
                    .double_value(&[]);
                per[si].push([clip_t, clip_i, dist, secs]);
                evaluations[si] = calls;
            }
            let done = per[0].len();
            eprintln!(
                "picture {done}/{total} done ({:.0} s so far)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let rows: Vec<Row> = settings
        .iter()
        .zip(&per)
        .zip(&evaluations)
        .map(|((&(kind, steps), v), &calls)| {
            let col = |k: usize| mean(&v.iter().map(|r| r[k]).collect::<Vec<_>>());
            Row {
                sampler: kind.name().into(),
                display_name: kind.display_name().into(),
                steps,
                unet_evaluations: calls,
                clip_t: col(0),
                clip_i: col(1),
                pixel_distance: col(2),
                seconds_per_image: median(&v.iter().map(|r| r[3]).collect::<Vec<_>>()),
            }
        })
        .collect();
    let euler50 = rows
        .iter()
        .find(|r| r.sampler == "euler" && r.steps == 50)
        .expect("euler at 50 steps")
        .clone();
    let matches = |r: &Row| {
        r.pixel_distance <= euler50.pixel_distance.max(SAME_PICTURE)
            && r.clip_i >= euler50.clip_i - TIE_MARGIN
            && r.clip_t >= euler50.clip_t - TIE_MARGIN
    };
    let matches_euler_50: Vec<(String, Option<usize>)> = SamplerKind::ALL
        .iter()
        .map(|k| {
            let first = rows
                .iter()
                .filter(|r| r.sampler == k.name() && matches(r))
                .map(|r| r.steps)
                .min();
            (k.name().to_string(), first)
        })
        .collect();
    let report = Report {
        model: "assets/toy-model".into(),
        judge: "assets/toy-judge".into(),
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        seeds: seeds.clone(),
        guidance: GUIDANCE,
        size,
        reference: format!("euler, {REFERENCE_STEPS} steps, same prompt and noise"),
        reference_clip_t: mean(&ref_clip_t),
        reference_floor: mean(&floor),
        rows: rows.clone(),
        matches_euler_50: matches_euler_50.clone(),
    };
    let json = serde_json::to_string_pretty(&report).expect("serialisable");
    moslora::fsutil::write_bytes(&out.join("samplers.json"), json.as_bytes())?;
    let md = table(
        &rows,
        &euler50,
        &matches_euler_50,
        mean(&ref_clip_t),
        mean(&floor),
    );
    moslora::fsutil::write_bytes(&out.join("samplers.md"), md.as_bytes())?;
    chart(&out.join("samplers.png"), &rows)?;
    print!("{md}");
    Ok(())
}

fn table(
    rows: &[Row],
    euler50: &Row,
    matches: &[(String, Option<usize>)],
    ref_t: f64,
    floor: f64,
) -> String {
    let mut s = String::from(
        "| sampler | steps | UNet evaluations | CLIP-T | CLIP-I to reference | pixel distance to reference | time / image (x Euler 50) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {:.4} | {:.4} | {:.2} | {:.3} s ({:.2}) |\n",
            r.display_name,
            r.steps,
            r.unet_evaluations,
            r.clip_t,
            r.clip_i,
            r.pixel_distance,
            r.seconds_per_image,
            r.seconds_per_image / euler50.seconds_per_image
        );
    }
    s += &format!(
        "\nThe 200-step Euler reference's own CLIP-T: {ref_t:.4}; its mean pixel distance to a \
         200-step DPM++ 2M Karras render of the same noise: {floor:.2}. Time: median seconds \
         per image (sampling and VAE decode).\n\n"
    );
    s += &format!(
        "Fewest steps matching 50-step Euler (pixel distance to the reference at most Euler \
         50's or under {SAME_PICTURE} level of 255, CLIP-I and CLIP-T within {TIE_MARGIN} of \
         Euler 50's or better):\n\n"
    );
    for (name, n) in matches {
        s += &format!(
            "- {name}: {}\n",
            n.map_or("none of 10-50".to_string(), |n| n.to_string())
        );
    }
    s
}

fn chart(path: &Path, rows: &[Row]) -> Result<()> {
    moslora::train::loss_log::register_font();
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("drawing {}: {e}", path.display()));
    let (w, h) = (1200u32, 520u32);
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    // A sampler whose pictures fall apart (DDIM with its clipped predictions) would flatten
    // every other line: it is left off the chart, and its legend entry says so.
    let broken = |k: SamplerKind| {
        rows.iter()
            .filter(|r| r.sampler == k.name())
            .all(|r| r.clip_i < 0.5)
    };
    let shown: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            !SamplerKind::ALL
                .iter()
                .any(|&k| broken(k) && r.sampler == k.name())
        })
        .collect();
    let max_dist = shown.iter().map(|r| r.pixel_distance).fold(0.0, f64::max) * 1.05;
    let (t_lo, t_hi) = shown.iter().fold((f64::MAX, f64::MIN), |(a, b), r| {
        (a.min(r.clip_t), b.max(r.clip_t))
    });
    let pad = ((t_hi - t_lo) * 0.1).max(1e-3);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly((1, 2));
        for (p, panel) in panels.iter().enumerate() {
            let (title, y_desc, lo, hi) = if p == 0 {
                (
                    "Distance to a 200-step Euler render (lower is closer)",
                    "mean pixel distance (0-255)",
                    0.0,
                    max_dist,
                )
            } else {
                (
                    "Judge's CLIP-T (higher is better)",
                    "CLIP-T",
                    t_lo - pad,
                    t_hi + pad,
                )
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(8f64..52f64, lo..hi)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("sampling steps")
                .x_label_formatter(&|x| format!("{}", *x as i64))
                .y_label_formatter(&|y| {
                    if p == 0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.3}")
                    }
                })
                .y_desc(y_desc)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, kind) in SamplerKind::ALL.iter().enumerate() {
                let c = colours[i % colours.len()];
                let pts: Vec<(f64, f64)> = shown
                    .iter()
                    .filter(|r| r.sampler == kind.name())
                    .map(|r| {
                        (
                            r.steps as f64,
                            if p == 0 { r.pixel_distance } else { r.clip_t },
                        )
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(if broken(*kind) {
                        format!("{} (left off, see the table)", kind.display_name())
                    } else {
                        kind.display_name().to_string()
                    })
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                    .map_err(|e| err(&e))?;
            }
            if p == 0 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).expect("the buffer is w x h x 3");
    moslora::fsutil::write_png(path, &img, &[])
}
