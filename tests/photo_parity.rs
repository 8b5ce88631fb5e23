//! Photo loading against diffusers' DreamBooth SDXL script (tests/reference/ref_photos.py runs
//! its `DreamBoothDataset` steps with PIL and torchvision on the same files): EXIF orientation,
//! grey / grey+alpha / RGBA / palette / CMYK / 16-bit / WebP photos, resizing, centre and random
//! crops, flips, and the `time_ids` that record the original size and the crop offset.

mod common;

use std::collections::HashMap;

use common::{fixtures, reference};
use moslora::train::dataset::{self, Photo};
use tch::{Kind, Tensor};

struct Reference {
    files: Vec<String>,
    seeds: HashMap<String, i64>,
    resolution: i64,
    tensors: HashMap<String, Tensor>,
}

fn reference_photos() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("ref/photos.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Reference {
        files: serde_json::from_value(v["files"].clone()).unwrap(),
        seeds: serde_json::from_value(v["seeds"].clone()).unwrap(),
        resolution: v["resolution"].as_i64().unwrap(),
        tensors: reference("photos"),
    }
}

fn load(name: &str) -> Photo {
    dataset::load_photo(&fixtures().join("photos").join(name)).unwrap()
}

/// (H, W, 3) as uint8 values in f64.
fn decoded(p: &Photo) -> Tensor {
    let (w, h) = p.image.dimensions();
    Tensor::from_slice(p.image.as_raw())
        .reshape([h as i64, w as i64, 3])
        .to_kind(Kind::Double)
}

/// (mean, max) absolute difference in 0..255 levels.
fn levels(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs();
    (
        d.mean(Kind::Double).double_value(&[]),
        d.max().double_value(&[]),
    )
}

/// Is this file's PIL decoding a reference for ours? 16-bit grey is not (see below).
fn pil_is_reference(name: &str) -> bool {
    name != "grey16.png"
}

/// JPEG decoders may differ in the inverse DCT and chroma upsampling: libjpeg-turbo (PIL)
/// against the image crate's decoder.
fn lossy(name: &str) -> bool {
    name.ends_with(".jpg")
}

#[test]
fn photos_decode_as_pil_decodes_them() {
    let r = reference_photos();
    assert!(
        r.files.len() >= 20,
        "the reference has {} photos",
        r.files.len()
    );
    for name in &r.files {
        let p = load(name);
        let want = &r.tensors[&format!("{name}.decoded")];
        assert_eq!(
            decoded(&p).size(),
            want.size(),
            "{name}: size after EXIF orientation"
        );
        if !pil_is_reference(name) {
            continue;
        }
        let (mean, max) = levels(&decoded(&p), want);
        println!("{name}: decoded vs PIL: mean {mean:.3}, max {max:.0} levels");
        // Tolerances (0..255 levels): lossless files exactly, except 16-bit RGB, which PIL
        // reduces to 8 bits by dropping the low byte and the image crate by rounding
        // (at most 1 level apart); JPEGs within 0.5 level on average and 4 at most (two
        // decoders' inverse DCT and upsampling; measured 0.16 and 3).
        let (mean_tol, max_tol) = if lossy(name) {
            (0.5, 4.0)
        } else if name == "rgb16.png" {
            (1.0, 1.0)
        } else {
            (0.0, 0.0)
        };
        assert!(
            mean <= mean_tol && max <= max_tol,
            "{name}: decoded differs from PIL by mean {mean:.3}, max {max} levels"
        );
    }
}

#[test]
fn sixteen_bit_grey_keeps_its_tones() {
    // PIL opens 16-bit grey PNGs as mode I;16, and `convert("RGB")` (what the diffusers script
    // calls) clips every sample above 255 to white: the script would train on a white square.
    // The reference here is the samples themselves, scaled to 8 bits (v / 257, rounded).
    let r = reference_photos();
    let name = "grey16.png";
    let samples = &r.tensors[&format!("{name}.samples16")];
    let want = (samples.to_kind(Kind::Double) / 257.0).round();
    let got = decoded(&load(name));
    for c in 0..3 {
        let (mean, max) = levels(&got.select(2, c), &want);
        println!("{name} channel {c}: vs v / 257: mean {mean:.3}, max {max:.0} levels");
        // Tolerance: 1 level (rounding of v / 257 either way).
        assert!(max <= 1.0, "{name}: differs from v / 257 by {max} levels");
    }
    let pil = &r.tensors[&format!("{name}.decoded")];
    assert_eq!(
        pil.min().double_value(&[]),
        255.0,
        "PIL's clipping changed: revisit this test"
    );
}

#[test]
fn crops_flips_and_time_ids_match_the_diffusers_script() {
    let r = reference_photos();
    let res = r.resolution;
    let mut compared = 0;
    let mut worst_mean = 0.0f64;
    let mut worst_max = 0.0f64;
    for name in &r.files {
        let p = load(name);
        for center in [true, false] {
            for flip in [false, true] {
                let tag = format!(
                    "{name}.{}.{}",
                    if center { "center" } else { "random" },
                    flip as i32
                );
                let crops = {
                    // RandomCrop.get_params draws after torch.manual_seed(seed).
                    let _rng = moslora::runtime::seeded(r.seeds[name]);
                    dataset::crops(&p, res, center, flip, 1)
                };
                assert_eq!(crops.len(), 1);
                let (pixels, ids) = &crops[0];
                let want_ids: Vec<f32> =
                    Vec::try_from(&r.tensors[&format!("{tag}.time_ids")]).unwrap();
                assert_eq!(
                    ids.as_slice(),
                    want_ids.as_slice(),
                    "{tag}: time_ids [orig_h, orig_w, top, left, h, w]"
                );
                assert_eq!(pixels.size(), [1, 3, res, res]);
                if !pil_is_reference(name) {
                    continue;
                }
                // [-1, 1] to 0..255 levels.
                let to_levels = |t: &Tensor| (t + 1.0) * 127.5;
                let want = r.tensors[&format!("{tag}.pixels")].unsqueeze(0);
                let (mean, max) = levels(&to_levels(pixels), &to_levels(&want));
                worst_mean = worst_mean.max(mean);
                worst_max = worst_max.max(max);
                // Tolerance: 0.5 level on average and 4 at most (measured 0.28 and 3): PIL's
                // bilinear resampling and the image crate's triangle filter have the same
                // support but round differently, and the JPEGs add their decoders'
                // differences (see above).
                assert!(
                    mean < 0.5 && max <= 4.0,
                    "{tag}: pixels differ from diffusers' by mean {mean:.3}, max {max} levels"
                );
                compared += 1;
            }
        }
    }
    println!(
        "{compared} crops: pixels within mean {worst_mean:.3} / max {worst_max:.0} levels of \
         diffusers' preprocessing; every time_ids row equal"
    );
    assert!(compared >= 80);
}
