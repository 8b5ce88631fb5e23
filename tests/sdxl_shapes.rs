//! The full-size SDXL base 1.0 layout: every tensor name and shape of the `sdxl-base` preset
//! equals the table that tests/reference/ref_shapes.py reads off diffusers/transformers models
//! built on the meta device from configs/sdxl-base-1.0/ (fixtures: ref/sdxl_base_tensor_shapes.json).
//! Built from shapes alone: no weights are allocated.

mod common;

use std::collections::BTreeMap;
use std::rc::Rc;

use moslora::sdxl::clip::ClipTextModel;
use moslora::sdxl::config::{presets, ClipTextConfig, UNetConfig, VaeConfig};
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::sdxl::vae::AutoencoderKL;
use moslora::sdxl::weights::{ShapeSource, TensorSource, Weights};
use tch::{Device, Kind};

type Shapes = BTreeMap<String, Vec<i64>>;

fn expected() -> BTreeMap<String, Shapes> {
    let path = common::fixtures().join("ref/sdxl_base_tensor_shapes.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make fixtures`", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn shapes_of(component: &str, build: impl FnOnce(&Weights)) -> Shapes {
    let src = Rc::new(ShapeSource::new());
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        component,
        Kind::Float,
        Device::Cpu,
    );
    build(&w);
    let seen = src.seen();
    let shapes: Shapes = seen.iter().cloned().collect();
    assert_eq!(
        shapes.len(),
        seen.len(),
        "{component}: a tensor name was requested twice"
    );
    shapes
}

fn compare(component: &str, ours: &Shapes, theirs: &Shapes) {
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty(), "{component}: not built: {missing:?}");
    assert!(extra.is_empty(), "{component}: not in SDXL: {extra:?}");
    for (name, shape) in theirs {
        assert_eq!(&ours[name], shape, "{component}: shape of {name}");
    }
}

fn params(shapes: &Shapes) -> i64 {
    shapes.values().map(|s| s.iter().product::<i64>()).sum()
}

#[test]
fn sdxl_base_layout_matches_reference_table() {
    let [unet, vae, te, te2, _] = presets::texts("sdxl-base").unwrap();
    let expected = expected();

    let cfg: UNetConfig = serde_json::from_str(unet).unwrap();
    let ours = shapes_of("unet", |w| {
        drop(UNet2DConditionModel::new(w, &cfg).unwrap())
    });
    compare("unet", &ours, &expected["unet"]);
    assert_eq!(ours.len(), 1680);
    assert_eq!(params(&ours), 2_567_463_684, "UNet parameter count");

    let cfg: VaeConfig = serde_json::from_str(vae).unwrap();
    let ours = shapes_of("vae", |w| drop(AutoencoderKL::new(w, &cfg).unwrap()));
    compare("vae", &ours, &expected["vae"]);
    assert_eq!(params(&ours), 83_653_863, "VAE parameter count");

    let cfg: ClipTextConfig = serde_json::from_str(te).unwrap();
    let ours = shapes_of("text_encoder", |w| {
        drop(ClipTextModel::new(w, &cfg, false).unwrap())
    });
    compare("text_encoder", &ours, &expected["text_encoder"]);
    assert_eq!(params(&ours), 123_060_480, "text_encoder parameter count");

    let cfg: ClipTextConfig = serde_json::from_str(te2).unwrap();
    let ours = shapes_of("text_encoder_2", |w| {
        drop(ClipTextModel::new(w, &cfg, true).unwrap())
    });
    compare("text_encoder_2", &ours, &expected["text_encoder_2"]);
    assert_eq!(params(&ours), 694_659_840, "text_encoder_2 parameter count");
}
