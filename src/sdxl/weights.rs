//! Where a model's frozen tensors come from.
//!
//! Model constructors take a [`Weights`] path (`w.pp("down_blocks").pp(0)`) and ask it for each
//! tensor by its checkpoint name and expected shape. The path resolves the request against a
//! [`TensorSource`]:
//! * [`SafetensorsSource`]: memory-mapped `.safetensors` files, each tensor copied once into
//!   the requested dtype and device (a full SDXL never needs twice its size in memory);
//! * [`RandomSource`]: seeded random weights, recorded so they can be written back out
//!   (`init-model`);
//! * [`ShapeSource`]: stride-0 stand-ins that allocate nothing, to check the full-size layout.
//!
//! The frozen base is plain tensors, not `VarStore` variables: nothing in it is trained, and
//! adapters keep their own variables apart from it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How a tensor would be initialised if it were created rather than loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with the given standard deviation.
    Normal(f64),
    /// Uniform in +-1/sqrt(fan_in), fan_in = product of all dimensions but the first
    /// (PyTorch's default for linear and convolution layers).
    FanIn,
    /// Every element the given value (CLIP's `logit_scale` starts at its config's value).
    Constant(f64),
}

/// A provider of named tensors.
pub trait TensorSource {
    /// The tensor `name` with exactly `shape`, in `kind` on `device`.
    fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        init: Init,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor>;

    /// Names this source holds that nobody asked for (checked after a model is built).
    fn unused(&self, _used: &[String]) -> Vec<String> {
        Vec::new()
    }
}

/// A position in the tensor-name tree of one model component, like `tch::nn::Path`.
#[derive(Clone)]
pub struct Weights {
    source: Rc<dyn TensorSource>,
    component: Rc<str>,
    prefix: String,
    kind: Kind,
    device: Device,
    used: Rc<RefCell<Vec<String>>>,
}

/// Where in the tree, not the source's tensors.
impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("component", &self.component)
            .field("prefix", &self.prefix)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Weights {
    pub fn new(source: Rc<dyn TensorSource>, component: &str, kind: Kind, device: Device) -> Self {
        Weights {
            source,
            component: component.into(),
            prefix: String::new(),
            kind,
            device,
            used: Rc::new(RefCell::new(Vec::new())),
        }
    }

    /// The sub-path `name` (`pp` as in "push path").
    pub fn pp<S: std::fmt::Display>(&self, name: S) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Weights {
            prefix,
            ..self.clone()
        }
    }

    /// The same path with another dtype (e.g. norms kept in f32).
    pub fn with_kind(&self, kind: Kind) -> Self {
        Weights {
            kind,
            ..self.clone()
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    /// The full name of `name` under this path.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The path itself, as a dotted module name.
    pub fn path(&self) -> &str {
        &self.prefix
    }

    pub fn get(&self, name: &str, shape: &[i64], init: Init) -> Result<Tensor> {
        let full = self.name(name);
        let t = self
            .source
            .tensor(&full, shape, init, self.kind, self.device)
            .map_err(|e| e.in_component(&self.component))?;
        self.used.borrow_mut().push(full);
        Ok(t)
    }

    /// Every name asked for so far, in order.
    pub fn used(&self) -> Vec<String> {
        self.used.borrow().clone()
    }

    /// Tensors in the source that the model did not ask for.
    pub fn unused(&self) -> Vec<String> {
        self.source.unused(&self.used.borrow())
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

pub fn safetensors_dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        k => return Err(Error::msg(format!("no safetensors dtype for {k:?}"))),
    })
}

/// Refuse a weight holding NaN or infinity, naming it: in a frozen weight it would surface
/// steps later as a black picture or a diverged loss. One sum in f32 is the cheap test (NaN
/// and infinity carry through it; about 3 s over SDXL's 3.5 G weights in f32 on two CPU
/// cores, a tenth of copying them once, against 45 s for `isfinite().all()`); only a
/// non-finite sum pays for the exact count, which also clears finite weights large enough
/// to overflow the sum.
pub fn check_finite(t: &Tensor, name: &str, file: &Path) -> Result<()> {
    if !t.is_floating_point() || t.numel() == 0 {
        return Ok(());
    }
    let sum = f64::try_from(t.sum(Kind::Float))?;
    if sum.is_finite() {
        return Ok(());
    }
    let finite = i64::try_from(t.isfinite().sum(Kind::Int64))? as u64;
    let total = t.numel() as u64;
    if finite == total {
        return Ok(());
    }
    Err(Error::NonFinite {
        component: String::new(),
        tensor: name.to_string(),
        file: file.to_path_buf(),
        count: total - finite,
        total,
    })
}

/// One memory-mapped `.safetensors` file.
#[derive(Debug)]
pub struct MappedFile {
    pub path: PathBuf,
    mmap: Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and treated as immutable for the map's lifetime;
        // a checkpoint being rewritten underneath a running process is outside our contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // Parse once up front so a truncated, corrupt or hostile file fails here, naming the
        // file and the tensor; the crate's own check stays behind ours.
        super::safetensors_header::check(&mmap, path)?;
        SafeTensors::deserialize(&mmap).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            what: format!("not a valid safetensors file ({e})"),
        })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            mmap,
        })
    }

    pub fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated when opened")
    }

    /// `__metadata__` of the header.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = SafeTensors::read_metadata(&self.mmap).map_err(|e| Error::BadFile {
            path: self.path.clone(),
            what: format!("unreadable safetensors header ({e})"),
        })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Copy one tensor out of the map as a libtorch tensor in the file's dtype, on the CPU.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let st = self.tensors();
        let view = st.tensor(name).map_err(|_| Error::MissingTensor {
            component: String::new(),
            tensor: name.to_string(),
            file: self.path.clone(),
        })?;
        let kind = kind_of(view.dtype()).ok_or_else(|| Error::BadFile {
            path: self.path.clone(),
            what: format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let data = view.data();
        let t = Tensor::f_from_data_size(data, &shape, kind).map_err(Error::from)?;
        // The copy is what the model keeps: release the map's pages of this tensor from the
        // resident set now, or loading peaks at twice the weights (map plus copies).
        let offset = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
        // SAFETY: a read-only shared file mapping (`Mmap::map`): released pages are read back
        // from the file if touched again, so every later borrow of the map sees the same bytes.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, offset, data.len())
        };
        Ok(t)
    }
}

/// Tensors from one or more memory-mapped `.safetensors` files (sharded checkpoints).
#[derive(Debug)]
pub struct SafetensorsSource {
    files: Vec<MappedFile>,
    /// tensor name -> index into `files`, and the shape stored there.
    index: BTreeMap<String, (usize, Vec<i64>)>,
    /// Alternative spellings: requested name -> stored name.
    aliases: HashMap<String, String>,
}

impl SafetensorsSource {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let f = MappedFile::open(path)?;
            for (name, view) in f.tensors().tensors() {
                let shape = view.shape().iter().map(|&d| d as i64).collect();
                index.insert(name, (i, shape));
            }
            files.push(f);
        }
        Ok(SafetensorsSource {
            files,
            index,
            aliases: HashMap::new(),
        })
    }

    /// Names held, with their stored shapes.
    pub fn names(&self) -> impl Iterator<Item = (&String, &Vec<i64>)> {
        self.index.iter().map(|(k, (_, s))| (k, s))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Accept `stored` in the file for a request of `requested`.
    pub fn alias(&mut self, requested: String, stored: String) {
        self.aliases.insert(requested, stored);
    }

    /// Resolve every stored name through `f`: where `f` gives Some(requested), a model asking
    /// for `requested` receives the stored tensor.
    pub fn alias_all(&mut self, f: impl Fn(&str) -> Option<String>) {
        let pairs: Vec<(String, String)> = self
            .index
            .keys()
            .filter_map(|k| f(k).map(|r| (r, k.clone())))
            .collect();
        for (r, k) in pairs {
            self.aliases.insert(r, k);
        }
    }

    fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        if self.index.contains_key(name) {
            name
        } else {
            self.aliases.get(name).map(String::as_str).unwrap_or(name)
        }
    }

    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index
            .get(self.resolve(name))
            .map(|(i, _)| self.files[*i].path.as_path())
    }

    fn file_list(&self) -> PathBuf {
        match self.files.as_slice() {
            [one] => one.path.clone(),
            many => PathBuf::from(
                many.iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        _init: Init,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let stored = self.resolve(name);
        let Some((i, found)) = self.index.get(stored) else {
            return Err(Error::MissingTensor {
                component: String::new(),
                tensor: name.to_string(),
                file: self.file_list(),
            });
        };
        if found.as_slice() != shape {
            return Err(Error::ShapeMismatch {
                component: String::new(),
                tensor: name.to_string(),
                file: self.files[*i].path.clone(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        let t = self.files[*i].load(stored)?;
        // One conversion straight to the target; `to_device` is a no-op on the CPU.
        let t = t.to_kind(kind).to_device(device);
        // Checked in the target dtype and place: an f32 sum over f32 on the CPU, or on the GPU,
        // is several times faster than over f16 on the CPU.
        check_finite(&t, name, &self.files[*i].path)?;
        Ok(t)
    }

    fn unused(&self, used: &[String]) -> Vec<String> {
        let used: std::collections::HashSet<&str> = used.iter().map(|u| self.resolve(u)).collect();
        self.index
            .keys()
            .filter(|k| !used.contains(k.as_str()))
            .cloned()
            .collect()
    }
}

/// Seeded random weights, remembered so that they can be saved (`init-model`).
#[derive(Debug)]
pub struct RandomSource {
    made: RefCell<Vec<(String, Tensor)>>,
}

impl RandomSource {
    /// Random draws use libtorch's global generator: seed it with `tch::manual_seed` first.
    pub fn new() -> Self {
        RandomSource {
            made: RefCell::new(Vec::new()),
        }
    }

    /// The tensors made so far, in creation order.
    pub fn take(&self) -> Vec<(String, Tensor)> {
        std::mem::take(&mut self.made.borrow_mut())
    }
}

impl Default for RandomSource {
    fn default() -> Self {
        Self::new()
    }
}

impl TensorSource for RandomSource {
    fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        init: Init,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let opts = (Kind::Float, Device::Cpu);
        let t = match init {
            Init::Zeros => Tensor::zeros(shape, opts),
            Init::Ones => Tensor::ones(shape, opts),
            Init::Constant(v) => Tensor::full(shape, v, opts),
            Init::Normal(std) => Tensor::randn(shape, opts) * std,
            Init::FanIn => {
                let fan_in: i64 = shape.iter().skip(1).product::<i64>().max(1);
                let bound = 1.0 / (fan_in as f64).sqrt();
                Tensor::rand(shape, opts) * (2.0 * bound) - bound
            }
        };
        self.made
            .borrow_mut()
            .push((name.to_string(), t.shallow_clone()));
        Ok(t.to_kind(kind).to_device(device))
    }
}

/// Tensors from another source, handed out with gradients on and remembered: a model built
/// from it can be trained from scratch or further (pretraining), its tensors being the
/// parameters.
pub struct TrainableSource {
    inner: Rc<dyn TensorSource>,
    made: RefCell<Vec<(String, Tensor)>>,
}

impl TrainableSource {
    pub fn new(inner: Rc<dyn TensorSource>) -> Self {
        TrainableSource {
            inner,
            made: RefCell::new(Vec::new()),
        }
    }

    /// The parameters handed out so far (shallow clones: the model's own tensors).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.made
            .borrow()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }
}

impl TensorSource for TrainableSource {
    fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        init: Init,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let t = self
            .inner
            .tensor(name, shape, init, kind, device)?
            .detach()
            .copy()
            .set_requires_grad(true);
        self.made
            .borrow_mut()
            .push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    fn unused(&self, used: &[String]) -> Vec<String> {
        self.inner.unused(used)
    }
}

/// Shapes only: every tensor is a stride-0 view of one element, so a full-size model can be
/// "built" without allocating its weights. Records every name and shape asked for.
#[derive(Debug)]
pub struct ShapeSource {
    seen: RefCell<Vec<(String, Vec<i64>)>>,
}

impl ShapeSource {
    pub fn new() -> Self {
        ShapeSource {
            seen: RefCell::new(Vec::new()),
        }
    }

    pub fn seen(&self) -> Vec<(String, Vec<i64>)> {
        self.seen.borrow().clone()
    }
}

impl Default for ShapeSource {
    fn default() -> Self {
        Self::new()
    }
}

impl TensorSource for ShapeSource {
    fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        _init: Init,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        self.seen
            .borrow_mut()
            .push((name.to_string(), shape.to_vec()));
        if shape.is_empty() {
            // A scalar (CLIP's `logit_scale`): nothing to save by a stride-0 view.
            return Ok(Tensor::zeros(shape, (kind, device)));
        }
        Ok(Tensor::zeros([1], (kind, device)).expand(shape, false))
    }
}

/// A contiguous CPU tensor seen as safetensors data, without copying it.
#[derive(Debug)]
struct TensorBytes {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let len = self.data_len();
        if len == 0 {
            return std::borrow::Cow::Borrowed(&[]);
        }
        // SAFETY: `tensor` is contiguous, on the CPU and owned by `self`, so `len` bytes at
        // its data pointer stay valid and unaliased for the borrow of `self`.
        let bytes = unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, len) };
        std::borrow::Cow::Borrowed(bytes)
    }

    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// A failed safetensors write: an I/O error stays one (so a full disk is reported as such),
/// anything else names the file.
pub fn safetensors_write_error(e: safetensors::SafeTensorError, tmp: &Path, path: &Path) -> Error {
    match e {
        safetensors::SafeTensorError::IoError(io) => Error::io(tmp, io),
        e => Error::msg(format!("writing {}: {e}", path.display())),
    }
}

/// Write named tensors as one `.safetensors` file, atomically (temporary file, then rename).
/// Tensors are streamed from their own memory: a multi-gigabyte model is not copied.
pub fn save_safetensors(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let tensor = t.to_device(Device::Cpu).contiguous();
        let dtype = safetensors_dtype(tensor.kind())?;
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        views.push((
            name.clone(),
            TensorBytes {
                tensor,
                dtype,
                shape,
            },
        ));
    }
    crate::fsutil::write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp)
            .map_err(|e| safetensors_write_error(e, tmp, path))?;
        crate::fsutil::plain_permissions(tmp);
        Ok(())
    })
}
