//! `moslora-bench`: the measurements `make bench` (bench/run.py) and bench/gpu.sh take of
//! moslora, one case per process so that each peak memory is that case's alone. Every
//! command prints one line `RESULT {json}`; bench/reference.py prints the same for the
//! diffusers + peft reference.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use moslora::adapter::file::{AdapterFile, AdapterMeta, FORMAT_VERSION};
use moslora::adapter::{self, AdapterConfig};
use moslora::config::RunConfig;
use moslora::runtime::Threads;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{
    load_unet, Denoiser, GenerateOptions, PromptEmbeds, RunOptions, TextEncoders,
};
use moslora::train::dataset::Example;
use moslora::train::optimizer::AdamW;
use moslora::train::{self, AdapterKind, TrainData};
use moslora::Result;

#[derive(Parser)]
#[command(name = "moslora-bench", about = "moslora's side of the benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seconds per training step (forward, backward, clipping, AdamW) on a synthetic batch
    TrainStep(TrainStepArgs),
    /// Seconds for one image: prompt encoding, sampling with guidance, VAE decode
    Sample(SampleArgs),
    /// A random adapter with non-zero B (what `sample` applies)
    MakeAdapter(MakeAdapterArgs),
    /// Seconds to score a render folder (DINO, CLIP-I, CLIP-T): what `moslora score` does
    Score(ScoreArgs),
}

#[derive(Args)]
struct ScoreArgs {
    #[arg(long)]
    renders: PathBuf,
    #[arg(long)]
    clip: PathBuf,
    #[arg(long)]
    dino: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    threads: Option<i32>,
}

/// The whole `moslora score`: encoders loaded, pictures decoded and preprocessed, both
/// encoders run in batches, the statistics, every output written.
fn score(a: &ScoreArgs) -> Result<serde_json::Value> {
    let device = moslora::runtime::parse_device(&a.device, moslora::runtime::Given::Flag)?;
    moslora::runtime::apply_threads(threads_setting(a.threads), device, None)?;
    let t0 = Instant::now();
    let opts = moslora::metrics::ScoreOptions {
        clip: Some(a.clip.clone()),
        dino: Some(a.dino.clone()),
        device,
        dino_eps: None,
    };
    let s = moslora::metrics::score(&a.renders, &opts, &mut moslora::metrics::Quiet)?;
    Ok(json!({"what": "score", "images": s.manifest.images.len(),
              "score_s": t0.elapsed().as_secs_f64()}))
}

#[derive(Args)]
struct Common {
    /// A diffusers folder
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16 (frozen weights); default by device
    #[arg(long)]
    dtype: Option<String>,
    /// libtorch's intra-op threads (default: moslora's choice, as RUN.yaml's `threads: auto`)
    #[arg(long)]
    threads: Option<i32>,
}

fn threads_setting(threads: Option<i32>) -> Threads {
    threads.map_or(Threads::Auto, |n| Threads::Fixed(n.max(1) as usize))
}

impl Common {
    /// The run options, with libtorch's threads set as `moslora` sets them for images of
    /// `side` pixels (None: the model's native size), or to --threads.
    fn options(&self, side: Option<i64>) -> Result<RunOptions> {
        let opts = RunOptions::from_names(
            &self.device,
            self.dtype.as_deref(),
            moslora::runtime::Given::Flag,
        )?;
        let work = ModelDir::open(&self.model).and_then(|d| {
            let scale = d.vae_config()?.scale_factor();
            Ok(d.unet_config()?.first_map_elements(side, side, scale))
        });
        moslora::runtime::apply_threads(threads_setting(self.threads), opts.device, work.ok())?;
        Ok(opts)
    }
}

#[derive(Args)]
struct TrainStepArgs {
    #[command(flatten)]
    common: Common,
    /// lora or moslora
    #[arg(long, default_value = "moslora")]
    adapter: String,
    #[arg(long, default_value_t = 4)]
    rank: i64,
    #[arg(long, default_value_t = 4)]
    batch: i64,
    /// Image side in pixels (latents are 1/8 of it)
    #[arg(long)]
    resolution: i64,
    /// Untimed steps first (kernel selection, allocator warm-up)
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value_t = 10)]
    steps: u64,
    #[arg(long)]
    gradient_checkpointing: bool,
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    common: Common,
    /// Adapter file, merged into the UNet as `moslora render` and `generate` do
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    guidance: f64,
    /// Image side in pixels
    #[arg(long)]
    size: i64,
    #[arg(long, default_value = "a photo of sks toy on the beach")]
    prompt: String,
    /// Images from the one prompt (seeds 0, 1, ...); `image_s` is their total with the prompt
    /// encoding
    #[arg(long, default_value_t = 1)]
    images: u64,
    /// Write the image here (outside the timing)
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct MakeAdapterArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "moslora")]
    adapter: String,
    #[arg(long, default_value_t = 4)]
    rank: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Wait for the GPU, so that a timer measures the work and not its queueing.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Cached latents and a prompt embedding of the model's sizes, as `prepare_data` leaves
/// them: the steps then run exactly the training code.
fn synthetic_data(unet_cfg: &moslora::sdxl::config::UNetConfig, resolution: i64) -> TrainData {
    tch::manual_seed(0);
    let cpu = (Kind::Float, Device::Cpu);
    let side = resolution / 8;
    let r = resolution as f32;
    let instance = (0..5)
        .map(|_| Example {
            mean: Tensor::randn([1, unet_cfg.in_channels, side, side], cpu) * 5.0,
            std: Tensor::full([1, unet_cfg.in_channels, side, side], 0.05, cpu),
            time_ids: [r, r, 0.0, 0.0, r, r],
            caption: None,
            mask: None,
        })
        .collect();
    let add_time = unet_cfg.addition_time_embed_dim.unwrap_or_default();
    let pooled = unet_cfg
        .projection_class_embeddings_input_dim
        .unwrap_or_default()
        - 6 * add_time;
    TrainData {
        instance,
        captions: Vec::new(),
        instance_prompt: PromptEmbeds {
            hidden: Tensor::randn([1, 77, unet_cfg.cross_attention_dim], cpu),
            pooled: Tensor::randn([1, pooled], cpu),
        },
        class: None,
        scaling_factor: 0.13025,
        sampler: None,
        validation: Vec::new(),
    }
}

fn train_step(a: &TrainStepArgs) -> Result<serde_json::Value> {
    let opts = a.common.options(Some(a.resolution))?;
    let dir = ModelDir::open(&a.common.model)?;
    let mut unet = load_unet(&dir, opts)?;
    let kind = AdapterKind::parse(&a.adapter)?;
    let mut cfg = RunConfig::default();
    cfg.adapter.rank = a.rank;
    cfg.train.batch_size = a.batch;
    cfg.train.resolution = a.resolution;
    cfg.train.gradient_checkpointing = a.gradient_checkpointing;
    let layers = adapter::inject(&mut unet, &kind.adapter_config(&cfg), cfg.seed)?;
    let mut opt = AdamW::new(
        adapter::trained_parameters(&mut unet),
        cfg.train.adam.clone(),
    );
    let sched = DdpmSchedule::new(&dir.scheduler_config()?)?;
    let data = synthetic_data(unet.config(), a.resolution);
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        let (loss, _) = train::train_step(&cfg, &data, &sched, &unet, &mut opt, opts);
        sync(opts.device);
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        losses.push(loss);
    }
    Ok(json!({
        "what": "train-step", "side": "moslora", "adapter": kind.name(), "rank": a.rank,
        "batch": a.batch, "resolution": a.resolution, "layers": layers,
        "gradient_checkpointing": a.gradient_checkpointing,
        "threads": tch::get_num_threads(), "device": a.common.device,
        "dtype": moslora::runtime::dtype_name(opts.dtype),
        "seconds": times, "median_s": median(&times), "losses": losses,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

fn sample(a: &SampleArgs) -> Result<serde_json::Value> {
    let opts = a.common.options(Some(a.size))?;
    let dir = ModelDir::open(&a.common.model)?;
    // As `generate`: the text encoders are dropped before the UNet is loaded.
    let text = TextEncoders::load(&dir, opts)?;
    let t = Instant::now();
    let cond = text.encode(&a.prompt)?;
    let uncond = text.encode_negative(None, &cond)?;
    sync(opts.device);
    let encode_s = t.elapsed().as_secs_f64();
    drop(text);
    let mut den = Denoiser::load(&dir, opts)?;
    if let Some(path) = &a.adapter {
        AdapterFile::read(path)?.apply(&mut den.unet, 1.0, path)?;
        adapter::merge_all(&mut den.unet);
    }
    let o = GenerateOptions {
        steps: a.steps,
        guidance: a.guidance,
        width: a.size,
        height: a.size,
        seed: 0,
        sampler: SamplerKind::Euler,
    };
    let (mut sample_s, mut decode_s, mut rgb) = (0.0, 0.0, None);
    for seed in 0..a.images.max(1) {
        let t = Instant::now();
        let noise = den.initial_noise(seed, o.width, o.height)?;
        let latents = den.sample(&cond, &uncond, &noise, &o, |_| {})?;
        sync(opts.device);
        sample_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let image = den.decode(&latents);
        decode_s += t.elapsed().as_secs_f64();
        rgb = Some(image);
    }
    let rgb = rgb.expect("at least one image");
    if let Some(out) = &a.out {
        let img = moslora::sdxl::image_processing::rgb_image(&rgb)?;
        moslora::fsutil::write_png(out, &img, &[])?;
    }
    Ok(json!({
        "what": "sample", "side": "moslora", "steps": a.steps, "guidance": a.guidance,
        "size": a.size, "images": a.images.max(1), "adapter": a.adapter.is_some(),
        "threads": tch::get_num_threads(),
        "device": a.common.device, "dtype": moslora::runtime::dtype_name(opts.dtype),
        "encode_s": encode_s, "sample_s": sample_s, "decode_s": decode_s,
        "image_s": encode_s + sample_s + decode_s, "peak_rss_mib": peak_rss_mib(),
    }))
}

fn make_adapter(a: &MakeAdapterArgs) -> Result<serde_json::Value> {
    let opts = a.common.options(None)?;
    let dir = ModelDir::open(&a.common.model)?;
    let mut unet = load_unet(&dir, opts)?;
    let kind = AdapterKind::parse(&a.adapter)?;
    let acfg = AdapterConfig {
        rank: a.rank,
        ..kind.adapter_config(&RunConfig::default())
    };
    let layers = adapter::inject(&mut unet, &acfg, a.seed)?;
    // A trained adapter's B is not zero: give it values so that merging changes the weights.
    tch::manual_seed(a.seed as i64 + 1);
    for l in adapter::adapted(&mut unet) {
        let ad = adapter::lowrank_mut(l).expect("adapted");
        tch::no_grad(|| {
            ad.b.copy_(&(Tensor::randn_like(&ad.b) * 0.01));
        });
    }
    let identity = train::model_identity(&dir, &mut unet, opts.dtype)?;
    let meta = AdapterMeta {
        format_version: FORMAT_VERSION,
        name: kind.name().to_string(),
        adapter: acfg,
        base_model: identity,
        training: json!({}),
        steps: 0,
        layers,
        unet_blocks: None,
    };
    adapter::file::save(&mut unet, &meta, &a.out)?;
    Ok(json!({"what": "make-adapter", "out": a.out, "layers": layers}))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::TrainStep(a) => train_step(a),
        Command::Sample(a) => sample(a),
        Command::MakeAdapter(a) => make_adapter(a),
        Command::Score(a) => score(a),
    };
    match result {
        Ok(v) => {
            println!("RESULT {v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
