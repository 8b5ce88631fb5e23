//! `moslora convert` (a single-file checkpoint to a diffusers folder and back) and
//! `moslora merge` (a model with an adapter folded into its weights, in either layout).
//!
//! Both stream: every tensor is read from the memory-mapped source, converted and written one
//! at a time, so a full-size SDXL never sits in memory whole. Tensor names are the ones the
//! model code asks for (built from the configs on shapes alone), so whatever spellings the
//! source used, the output has the canonical ones, and a source tensor no component uses is an
//! error rather than silently dropped. Outputs are written beside their destination and
//! renamed into place when complete.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use super::clip::ClipTextModel;
use super::model_dir::{check_all_used, ModelDir, COMPONENTS};
use super::model_folder;
use super::nn::LinearDelta;
use super::sgm_names::{self, Part};
use super::single_file::{is_single_file, ModelConfigs, CONFIGS_KEY};
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::{
    safetensors_dtype, safetensors_write_error, Init, MappedFile, ShapeSource, TensorSource,
    Weights,
};
use crate::error::{Error, Result};
use crate::fsutil;

/// How to write a model.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// dtype of the written weights; None keeps the source UNet's.
    pub dtype: Option<Kind>,
    /// Replace an existing output.
    pub force: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub single_file: bool,
    pub dtype: Kind,
    pub tensors: usize,
    /// Adapted layers folded into the weights (merge only).
    pub merged_layers: usize,
}

/// Write `model` to `out`: a single file if `out` ends in `.safetensors`, else a folder.
pub fn convert(model: &ModelDir, out: &Path, o: &WriteOptions) -> Result<Written> {
    write_with_deltas(model, out, o, &HashMap::new())
}

/// Weight updates to fold in as the model is written: component (`unet`, `text_encoder`,
/// `text_encoder_2`) -> weight tensor name -> the delta whose weight is added.
pub type WeightDeltas = HashMap<String, HashMap<String, Box<dyn LinearDelta>>>;

/// The configs a model is built with.
pub fn configs_of(model: &ModelDir) -> Result<ModelConfigs> {
    match &model.single {
        Some(s) => Ok(s.configs.clone()),
        None => ModelConfigs::from_folder(&model.root),
    }
}

/// The dtype the source's UNet is stored in.
fn stored_kind(model: &ModelDir) -> Result<Kind> {
    if let Some(s) = &model.single {
        return Ok(s.stored_kind());
    }
    let files = model.weight_files("unet", Kind::Float)?;
    let f = MappedFile::open(&files[0])?;
    let st = f.tensors();
    let kind = st
        .tensors()
        .iter()
        .find_map(|(_, v)| match v.dtype() {
            Dtype::F16 => Some(Kind::Half),
            Dtype::BF16 => Some(Kind::BFloat16),
            Dtype::F32 => Some(Kind::Float),
            _ => None,
        })
        .unwrap_or(Kind::Float);
    Ok(kind)
}

/// Every tensor name and shape of a component, as the model code asks for them.
pub fn listing(component: &str, configs: &ModelConfigs) -> Result<Vec<(String, Vec<i64>)>> {
    let src = Rc::new(ShapeSource::new());
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        component,
        Kind::Float,
        Device::Cpu,
    );
    match component {
        "unet" => drop(UNet2DConditionModel::new(&w, &configs.unet()?)?),
        "vae" => drop(AutoencoderKL::new(&w, &configs.vae()?)?),
        "text_encoder" => drop(ClipTextModel::new(
            &w,
            &configs.text_encoder(component)?,
            false,
        )?),
        "text_encoder_2" => drop(ClipTextModel::new(
            &w,
            &configs.text_encoder(component)?,
            true,
        )?),
        _ => return Err(Error::msg(format!("unknown component {component}"))),
    }
    Ok(src.seen())
}

/// A tensor written when the serializer reaches it, so that only one is in memory at a time.
struct Lazy<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    kind: Kind,
    make: Box<dyn Fn() -> Result<Tensor> + 'a>,
    /// The first failure: the serializer cannot return one, so it is reported afterwards.
    failed: &'a RefCell<Option<Error>>,
}

impl safetensors::View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let len = self.data_len();
        let mut buf = vec![0u8; len];
        let made = (self.make)().and_then(|t| {
            let t = t.to_kind(self.kind).to_device(Device::Cpu).contiguous();
            let want: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
            if t.size() != want {
                return Err(Error::msg(format!(
                    "internal: made a {:?} tensor for a {want:?} slot",
                    t.size()
                )));
            }
            t.f_copy_data_u8(&mut buf, t.numel())?;
            Ok(())
        });
        if let Err(e) = made {
            self.failed.borrow_mut().get_or_insert(e);
        }
        Cow::Owned(buf)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.kind.elt_size_in_bytes()
    }
}

/// The tensors of one component, read from the source, with its deltas folded in.
struct ComponentReader<'a> {
    w: Weights,
    kind: Kind,
    deltas: &'a HashMap<String, Box<dyn LinearDelta>>,
}

impl ComponentReader<'_> {
    fn read(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        match self.deltas.get(name) {
            // Merged in f32 then rounded once, whatever the output dtype.
            Some(a) => {
                let _guard = tch::no_grad_guard();
                let w0 = self
                    .w
                    .with_kind(Kind::Float)
                    .get(name, shape, Init::Zeros)?;
                let delta = a.delta_weight(&w0).to_kind(Kind::Float);
                Ok((w0 + delta).to_kind(self.kind))
            }
            None => self.w.get(name, shape, Init::Zeros),
        }
    }
}

/// Write `model` to `out` (as `convert`) with `deltas` added to their weights; `Written`
/// counts them in `merged_layers`.
pub fn write_with_deltas(
    model: &ModelDir,
    out: &Path,
    o: &WriteOptions,
    deltas: &WeightDeltas,
) -> Result<Written> {
    let same = out
        .canonicalize()
        .ok()
        .is_some_and(|c| model.root.canonicalize().ok().as_deref() == Some(c.as_path()));
    if same {
        return Err(Error::msg(format!(
            "{} is the model being read: choose another output",
            out.display()
        )));
    }
    if out.exists() && !o.force {
        return Err(Error::OutputExists {
            path: out.to_path_buf(),
            hint: "choose another output or pass --force to replace it".into(),
        });
    }
    let configs = configs_of(model)?;
    let kind = match o.dtype {
        Some(k) => k,
        None => stored_kind(model)?,
    };
    let single_file = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let tensors = if single_file {
        write_single_file(model, &configs, out, kind, deltas)?
    } else {
        write_folder(model, &configs, out, kind, deltas)?
    };
    Ok(Written {
        path: out.to_path_buf(),
        single_file,
        dtype: kind,
        tensors,
        merged_layers: deltas.values().map(HashMap::len).sum(),
    })
}

/// One diffusers tensor of a stored tensor: (chunk index, name, shape).
type Piece = (i64, String, Vec<i64>);

const WEIGHT_COMPONENTS: [&str; 4] = ["unet", "vae", "text_encoder", "text_encoder_2"];

/// The component's deltas are folded in as its tensors are read.
fn reader<'a>(
    model: &ModelDir,
    component: &str,
    kind: Kind,
    deltas: &'a WeightDeltas,
    none: &'a HashMap<String, Box<dyn LinearDelta>>,
) -> Result<ComponentReader<'a>> {
    Ok(ComponentReader {
        w: model.weights(component, kind, Device::Cpu)?,
        kind,
        deltas: deltas.get(component).unwrap_or(none),
    })
}

/// Serialize lazily built tensors to `path` (atomically), then check that every source tensor
/// was used and nothing failed.
fn serialize(
    views: Vec<(String, Lazy<'_>)>,
    metadata: HashMap<String, String>,
    path: &Path,
    failed: &RefCell<Option<Error>>,
    readers: &[&ComponentReader<'_>],
) -> Result<()> {
    fsutil::write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp)
            .map_err(|e| safetensors_write_error(e, tmp, path))?;
        fsutil::plain_permissions(tmp);
        if let Some(e) = failed.borrow_mut().take() {
            return Err(e);
        }
        for r in readers {
            check_all_used(&r.w)?;
        }
        Ok(())
    })
}

fn write_single_file(
    model: &ModelDir,
    configs: &ModelConfigs,
    out: &Path,
    kind: Kind,
    deltas: &WeightDeltas,
) -> Result<usize> {
    let layout = configs.layout()?;
    let dtype = safetensors_dtype(kind)?;
    let failed = RefCell::new(None);
    let none = HashMap::new();
    let mut readers = Vec::new();
    for c in WEIGHT_COMPONENTS {
        let r = reader(model, c, kind, deltas, &none)?;
        readers.push((c, r, listing(c, configs)?));
    }
    let mut views = Vec::new();
    for (c, r, list) in &readers {
        // Group the diffusers tensors by the stored tensor they go into (q, k and v of an
        // OpenCLIP layer are one tensor there).
        let mut groups: BTreeMap<String, (Part, Vec<Piece>)> = BTreeMap::new();
        for (name, shape) in list {
            let stored = sgm_names::to_single_file(c, name, &layout)
                .ok_or_else(|| Error::msg(format!("{c}: no single-file name for `{name}`")))?;
            let index = match stored.part {
                Part::Chunk { index, .. } => index,
                _ => 0,
            };
            groups
                .entry(stored.name)
                .or_insert((stored.part, Vec::new()))
                .1
                .push((index, name.clone(), shape.clone()));
        }
        for (stored, (part, mut pieces)) in groups {
            pieces.sort_by_key(|p| p.0);
            if let Part::Chunk { of, .. } = part {
                if pieces.len() as i64 != of {
                    return Err(Error::msg(format!(
                        "{c}: `{stored}` needs {of} parts, the model has {}",
                        pieces.len()
                    )));
                }
            }
            let shape = part
                .stored_shape(&pieces[0].2)
                .iter()
                .map(|&d| d as usize)
                .collect();
            let make = move || -> Result<Tensor> {
                let mut parts = Vec::new();
                for (_, name, shape) in &pieces {
                    parts.push(r.read(name, shape)?);
                }
                Ok(part.assemble(&parts))
            };
            views.push((
                stored,
                Lazy {
                    dtype,
                    shape,
                    kind,
                    make: Box::new(make),
                    failed: &failed,
                },
            ));
        }
    }
    let n = views.len();
    let mut md = HashMap::new();
    md.insert("format".to_string(), "pt".to_string());
    md.insert(CONFIGS_KEY.to_string(), configs.to_metadata()?);
    // The ModelSpec fields A1111 / ComfyUI show for a checkpoint.
    md.insert("modelspec.sai_model_spec".into(), "1.0.0".into());
    md.insert(
        "modelspec.architecture".into(),
        "stable-diffusion-xl-v1-base".into(),
    );
    md.insert(
        "modelspec.implementation".into(),
        "https://github.com/Stability-AI/generative-models".into(),
    );
    md.insert(
        "modelspec.title".into(),
        out.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    md.insert("modelspec.date".into(), crate::runtime::iso_date_now());
    let rs: Vec<&ComponentReader> = readers.iter().map(|(_, r, _)| r).collect();
    serialize(views, md, out, &failed, &rs)?;
    Ok(n)
}

fn write_folder(
    model: &ModelDir,
    configs: &ModelConfigs,
    out: &Path,
    kind: Kind,
    deltas: &WeightDeltas,
) -> Result<usize> {
    let tmp = fsutil::temp_path(out);
    let _ = std::fs::remove_dir_all(&tmp);
    let result = fill_folder(model, configs, &tmp, kind, deltas);
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        let removed = if out.is_dir() {
            std::fs::remove_dir_all(out)
        } else {
            std::fs::remove_file(out)
        };
        removed.map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(n)
}

fn fill_folder(
    model: &ModelDir,
    configs: &ModelConfigs,
    dir: &Path,
    kind: Kind,
    deltas: &WeightDeltas,
) -> Result<usize> {
    let dtype = safetensors_dtype(kind)?;
    let none = HashMap::new();
    let mut n = 0;
    for (c, stem) in COMPONENTS {
        let failed = RefCell::new(None);
        let r = reader(model, c, kind, deltas, &none)?;
        let mut views = Vec::new();
        for (name, shape) in listing(c, configs)? {
            let r = &r;
            let dims = shape.iter().map(|&d| d as usize).collect();
            let key = name.clone();
            let make = move || r.read(&name, &shape);
            views.push((
                key,
                Lazy {
                    dtype,
                    shape: dims,
                    kind,
                    make: Box::new(make),
                    failed: &failed,
                },
            ));
        }
        n += views.len();
        let mut md = HashMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let sub = dir.join(c);
        serialize(
            views,
            md,
            &sub.join(format!("{stem}.safetensors")),
            &failed,
            &[&r],
        )?;
        model_folder::write_config(dir, c, configs.text(c))?;
    }
    model_folder::write_scheduler(dir, configs.text("scheduler"))?;
    for (name, pad) in model_folder::TOKENIZERS {
        let from = match &model.single {
            None => Some(model.component(name)),
            Some(_) => None,
        };
        match from.filter(|p| p.is_dir()) {
            Some(src) => copy_files(&src, &dir.join(name))?,
            None => model_folder::write_tokenizer(&dir.join(name), pad)?,
        }
    }
    let index = model.root.join("model_index.json");
    if model.single.is_none() && index.is_file() {
        std::fs::copy(&index, dir.join("model_index.json")).map_err(|e| Error::io(&index, e))?;
    } else {
        model_folder::write_model_index(dir)?;
    }
    Ok(n)
}

/// Copy the plain files of a folder (a tokenizer folder has no sub-folders).
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let path = entry.path();
        if path.is_file() {
            std::fs::copy(&path, to.join(entry.file_name())).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Open a model for reading: a folder or a single file, with an optional configs folder for
/// single files that are not SDXL base sized.
pub fn open_model(path: &Path, configs: Option<&Path>) -> Result<ModelDir> {
    if configs.is_some() && !is_single_file(path) {
        return Err(Error::msg(format!(
            "--config applies to single-file checkpoints; {} is a folder with its own configs",
            path.display()
        )));
    }
    ModelDir::open_with_configs(path, configs)
}
