//! `moslora merge`: a model with an adapter folded into its weights, written in either layout
//! (a diffusers folder or a single file). The writing streams through `sdxl::convert`; this
//! module only turns the adapter file into the weight deltas it adds.

use std::collections::HashMap;
use std::path::Path;

use super::file::AdapterFile;
use super::Component;
use crate::error::{Error, Result};
use crate::sdxl::convert::{
    configs_of, listing, write_with_deltas, WeightDeltas, WriteOptions, Written,
};
use crate::sdxl::model_dir::ModelDir;

/// Write `model` with the adapter at `adapter` merged into its UNet and, when it adapts them,
/// its text encoders (`W0 + scale * alpha/r * B M A`, or its family's update, computed in f32 and then rounded to the
/// output dtype, as `generate --adapter` does).
pub fn merge(
    model: &ModelDir,
    adapter: &Path,
    scale: f64,
    out: &Path,
    o: &WriteOptions,
) -> Result<Written> {
    let file = AdapterFile::read(adapter)?;
    let configs = configs_of(model)?;
    let foreign = |what: String| Error::AdapterMismatch {
        adapter: adapter.to_path_buf(),
        model: format!("the model {}", model.root.display()),
        what,
        trained_on: file.meta.base_model.name.clone(),
    };
    let mut deltas: WeightDeltas = HashMap::new();
    for c in Component::ALL {
        let layers = file.component_layers(c);
        if layers.is_empty() {
            continue;
        }
        let shapes: HashMap<String, Vec<i64>> =
            listing(c.prefix(), &configs)?.into_iter().collect();
        let into = deltas.entry(c.prefix().to_string()).or_default();
        for (module, t) in layers {
            let name = format!("{module}.weight");
            let shape = shapes.get(&name).ok_or_else(|| {
                foreign(format!(
                    "the model has no layer `{module}` in {}",
                    c.prefix()
                ))
            })?;
            if shape.len() != 2 {
                return Err(foreign(format!(
                    "layer `{module}` is {shape:?} in the model, not a linear layer"
                )));
            }
            let a = t
                .adapter(
                    &file.meta.adapter,
                    Some((shape[1], shape[0])),
                    scale,
                    module,
                )
                .map_err(|e| foreign(e.to_string()))?;
            into.insert(name, a);
        }
    }
    write_with_deltas(model, out, o, &deltas)
}
