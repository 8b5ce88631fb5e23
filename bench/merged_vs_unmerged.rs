//! Seconds per 50-step image with an adapter merged into the weights vs run as a side branch.
//!
//!     cargo run --release --example merged_vs_unmerged -- MODEL ADAPTER [SIZE] [REPEATS]
//!
//! Alternates the two modes and prints the median of each and their ratio.

use std::path::PathBuf;
use std::time::Instant;

use moslora::adapter::{self, file::AdapterFile};
use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{Denoiser, GenerateOptions, RunOptions, TextEncoders};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> moslora::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(args.get(1).expect("MODEL"));
    let adapter_path = PathBuf::from(args.get(2).expect("ADAPTER"));
    let size: i64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(128);
    let repeats: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(3);
    let dir = ModelDir::open(&model)?;
    let opts = RunOptions::default();
    let text = TextEncoders::load(&dir, opts)?;
    let cond = text.encode("a photo of sks toy")?;
    let uncond = text.encode_negative(None, &cond)?;
    let mut den = Denoiser::load(&dir, opts)?;
    AdapterFile::read(&adapter_path)?.apply(&mut den.unet, 1.0, &adapter_path)?;
    let o = GenerateOptions {
        steps: 50,
        guidance: 5.0,
        width: size,
        height: size,
        seed: 0,
        sampler: SamplerKind::Euler,
    };
    let noise = den.initial_noise(0, size, size)?;
    let (mut merged, mut unmerged) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        for merge in [false, true] {
            if merge {
                adapter::merge_all(&mut den.unet);
            } else {
                adapter::unmerge_all(&mut den.unet);
            }
            let t = Instant::now();
            let latents = den.sample(&cond, &uncond, &noise, &o, |_| {})?;
            let _ = den.decode(&latents);
            let s = t.elapsed().as_secs_f64();
            if merge {
                merged.push(s)
            } else {
                unmerged.push(s)
            }
        }
    }
    let (m, u) = (median(merged), median(unmerged));
    println!("50-step {size}x{size} image, guidance 5: merged {m:.3} s, unmerged {u:.3} s, merged/unmerged {:.2}", m / u);
    Ok(())
}
