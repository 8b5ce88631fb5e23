//! Image preprocessing for the CLIP and DINO encoders, pixel for pixel as the Python reference:
//!
//! * **CLIP** follows transformers' `CLIPImageProcessor` PIL backend (`CLIPImageProcessorPil`):
//!   RGB (transparency composited onto white, as its `convert_to_rgb` does), shortest edge to 224 with PIL's bicubic
//!   (long edge `int(224 * long / short)`), centre crop 224 (offset `(size - 224) // 2`),
//!   `x / 255` (computed in f64, stored f32), then `(x - mean) / std` in f32 with CLIP's
//!   mean/std.
//! * **DINO** follows the protocol of the published DreamBooth-metric reimplementations
//!   (torchvision on PIL images): `Resize(256, BICUBIC)` (shortest edge 256, the same long-edge
//!   rule), `CenterCrop(224)` (offset `round((size - 224) / 2)`, Python's round half to even),
//!   after `Image.open(path).convert("RGB")` (which drops an alpha channel rather than
//!   compositing it),
//!   `ToTensor` (`x / 255` in f32), `Normalize` with ImageNet's mean/std.
//!
//! Both resize with PIL's own resampling, reproduced exactly in [`pil_resize`]: a separable
//! convolution (horizontal pass, then vertical) whose support grows with the downscale factor,
//! bicubic with a = -0.5, weights in 22-bit fixed point and the intermediate image rounded to
//! 8 bits. The `image` crate's CatmullRom differs by a few levels per pixel, which is why it is
//! not used. Tested against the Python processors to within float rounding (tests/metrics_parity.rs).

use image::{DynamicImage, RgbImage};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// OpenAI CLIP's normalisation (`OPENAI_CLIP_MEAN`, `OPENAI_CLIP_STD`), digit for digit as
/// transformers writes them (f32 rounds them exactly as torch does the Python floats).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];
/// ImageNet's (DINO).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How the crop offset of a centre crop is rounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CropRounding {
    /// `(size - crop) // 2`: transformers' `center_crop`.
    Floor,
    /// `round((size - crop) / 2)`, half to even: torchvision's `CenterCrop`.
    HalfEven,
}

/// How `u8 -> [0, 1]` is computed, as each reference does it (they differ in the last bit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rescale {
    /// `f32(f64(x) * (1 / 255))`: transformers' `rescale`.
    F64Multiply,
    /// `f32(x) / 255` in f32: torchvision's `to_tensor`.
    F32Divide,
}

/// How a picture with transparency becomes RGB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// Composited onto white: transformers' `convert_to_rgb`.
    White,
    /// Dropped: PIL's `convert("RGB")`, what the torchvision pipelines start from.
    Drop,
}

/// One encoder's preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// The shortest edge after resizing.
    pub resize: u32,
    /// The square centre crop.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub crop_rounding: CropRounding,
    pub rescale: Rescale,
    pub alpha: Alpha,
}

impl Preprocess {
    /// transformers' `CLIPImageProcessorPil` defaults at `size` (224 for every OpenAI and LAION
    /// CLIP the metrics use).
    pub fn clip(size: u32) -> Self {
        Preprocess {
            resize: size,
            crop: size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            crop_rounding: CropRounding::Floor,
            rescale: Rescale::F64Multiply,
            alpha: Alpha::White,
        }
    }

    /// The DINO protocol: resize 256, centre crop 224, ImageNet mean/std (torchvision).
    pub fn dino() -> Self {
        Preprocess {
            resize: 256,
            crop: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            crop_rounding: CropRounding::HalfEven,
            rescale: Rescale::F32Divide,
            alpha: Alpha::Drop,
        }
    }

    /// The resized and cropped picture, before normalisation (8-bit, as PIL holds it).
    pub fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (nw, nh) = shortest_edge_size(w, h, self.resize);
        let resized = pil_resize(img, nw, nh);
        let off = |size: u32| -> u32 {
            let d = size.saturating_sub(self.crop);
            match self.crop_rounding {
                CropRounding::Floor => d / 2,
                CropRounding::HalfEven => {
                    let half = d / 2;
                    // d odd: x.5 rounds to the even neighbour.
                    if d % 2 == 1 && half % 2 == 1 {
                        half + 1
                    } else {
                        half
                    }
                }
            }
        };
        // The resize never leaves an edge below the crop (shortest edge >= crop for every
        // configuration used here), so no padding case arises.
        let (left, top) = (off(nw), off(nh));
        image::imageops::crop_imm(&resized, left, top, self.crop.min(nw), self.crop.min(nh))
            .to_image()
    }

    /// Normalised pixel values, (3, crop, crop) f32, of a decoded picture.
    pub fn pixel_values(&self, img: &DynamicImage) -> Tensor {
        self.pixel_values_rgb(&to_rgb(img, self.alpha))
    }

    /// Normalised pixel values of an RGB picture.
    pub fn pixel_values_rgb(&self, img: &RgbImage) -> Tensor {
        let cropped = self.resize_and_crop(img);
        let (w, h) = cropped.dimensions();
        let n = (w * h) as usize;
        let mut data = vec![0f32; 3 * n];
        for (i, p) in cropped.pixels().enumerate() {
            for c in 0..3 {
                let x = match self.rescale {
                    Rescale::F64Multiply => (f64::from(p[c]) * (1.0 / 255.0)) as f32,
                    Rescale::F32Divide => f32::from(p[c]) / 255.0,
                };
                data[c * n + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        Tensor::from_slice(&data).view([3, h as i64, w as i64])
    }

    /// A batch (n, 3, crop, crop).
    pub fn batch(&self, imgs: &[DynamicImage]) -> Tensor {
        let v: Vec<Tensor> = imgs.iter().map(|i| self.pixel_values(i)).collect();
        Tensor::stack(&v, 0).to_kind(Kind::Float)
    }
}

/// (width, height) with the shortest edge `size` and the long edge `int(size * long / short)`
/// (transformers' `get_resize_output_image_size`, torchvision's `Resize(int)`).
pub fn shortest_edge_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python computes `size * long / short` in double precision and truncates.
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// A decoded picture in RGB as the reference gives it to the processor: grey replicated;
/// alpha dropped, or composited onto white (PIL's `alpha_composite` over an opaque white
/// background, in its integer arithmetic).
pub fn to_rgb(img: &DynamicImage, alpha: Alpha) -> RgbImage {
    if !img.color().has_alpha() || alpha == Alpha::Drop {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p[3]);
        for c in 0..3 {
            o[c] = if a == 0 {
                255
            } else {
                // PIL's AlphaComposite.c with dst = opaque white, PRECISION_BITS 7.
                let blend = 255 * (255 - a);
                let outa255 = a * 255 + blend;
                let coef1 = a * 255 * 255 * (1 << 7) / outa255;
                let coef2 = 255 * (1 << 7) - coef1;
                let tmp = u32::from(p[c]) * coef1 + 255 * coef2 + (0x80 << 7);
                let div255 = ((tmp >> 8) + tmp) >> 8;
                (div255 >> 7).min(255) as u8
            };
        }
    }
    out
}

/// PIL's fixed-point precision for 8-bit images (`Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel, a = -0.5.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's sinc, `sin(pi x) / (pi x)`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// PIL's Lanczos kernel, a = 3.
fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// The PIL resampling filters reproduced here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `Image.BICUBIC` (a = -0.5, support 2).
    Bicubic,
    /// `Image.LANCZOS` (a = 3, support 3).
    Lanczos,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Resample::Bicubic => bicubic(x),
            Resample::Lanczos => lanczos(x),
        }
    }
}

/// One axis's taps, as PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: for every output
/// index the first input index and its fixed-point weights.
fn coefficients_of(filter: Resample, in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut out = Vec::with_capacity(out_size as usize);
    for xx in 0..out_size {
        let center = (f64::from(xx) + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // PIL truncates after adding 0.5 (C's int cast), then clamps.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..n)
            .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            for v in &mut k {
                *v /= ww;
            }
        }
        let one = f64::from(1u32 << PRECISION_BITS);
        let fixed = k
            .iter()
            .map(|&v| {
                if v < 0.0 {
                    (-0.5 + v * one) as i32
                } else {
                    (0.5 + v * one) as i32
                }
            })
            .collect();
        out.push((xmin, fixed));
    }
    out
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((w, h), Image.BICUBIC)` of an RGB image, bit for bit: the horizontal pass
/// first (to an 8-bit intermediate), then the vertical one; an axis whose size does not change
/// is not resampled at all.
pub fn pil_resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    pil_resize_with(Resample::Bicubic, img, w, h)
}

/// `Image.resize((w, h), filter)` of an RGB image, bit for bit (see [`pil_resize`]).
pub fn pil_resize_with(filter: Resample, img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let mut cur = img.clone();
    if w != iw {
        let coeffs = coefficients_of(filter, iw, w);
        let mut out = RgbImage::new(w, ih);
        let src = cur.as_raw();
        let dst: &mut [u8] = &mut out;
        for y in 0..ih as usize {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &kj) in k.iter().enumerate() {
                        ss += i64::from(row[(xmin + j) * 3 + c]) * i64::from(kj);
                    }
                    dst[(y * w as usize + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    if h != ih {
        let cw = cur.width() as usize;
        let coeffs = coefficients_of(filter, ih, h);
        let mut out = RgbImage::new(cur.width(), h);
        let src = cur.as_raw();
        let dst: &mut [u8] = &mut out;
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cw {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &kj) in k.iter().enumerate() {
                        ss += i64::from(src[((ymin + j) * cw + x) * 3 + c]) * i64::from(kj);
                    }
                    dst[(yy * cw + x) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    cur
}

/// A (3, H, W) u8 tensor (the pipeline's output, see `pipeline::to_rgb8`) as an image.
pub fn rgb_image(rgb: &Tensor) -> Result<RgbImage> {
    let size = rgb.size();
    let (h, w) = (size[1] as u32, size[2] as u32);
    let hwc = rgb.permute([1, 2, 0]).contiguous();
    let len = (h * w * 3) as usize;
    let mut bytes = vec![0u8; len];
    hwc.f_copy_data_u8(&mut bytes, len)?;
    RgbImage::from_raw(w, h, bytes).ok_or_else(|| {
        Error::msg(format!(
            "an image tensor of shape {size:?} is not (3, H, W)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_python_rule() {
        assert_eq!(shortest_edge_size(640, 480, 224), (298, 224));
        assert_eq!(shortest_edge_size(100, 333, 224), (224, 745));
        assert_eq!(shortest_edge_size(64, 64, 256), (256, 256));
    }

    #[test]
    fn unchanged_size_is_a_copy_and_weights_sum_to_one() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 9]));
        assert_eq!(pil_resize(&img, 7, 5), img);
        let of = |filter, i, o| coefficients_of(filter, i, o);
        let all = [
            of(Resample::Bicubic, 1000, 224),
            of(Resample::Bicubic, 50, 224),
            of(Resample::Lanczos, 1000, 224),
            of(Resample::Lanczos, 50, 224),
        ];
        for (_, k) in all.iter().flatten() {
            let s: i64 = k.iter().map(|&v| i64::from(v)).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{s}");
        }
    }

    #[test]
    fn crop_rounding() {
        // 257 - 224 = 33: floor 16; 16.5 rounds to the even 16. 259: 17.5 -> 18.
        let p = Preprocess::dino();
        let img = RgbImage::new(259, 256);
        assert_eq!(p.resize_and_crop(&img).dimensions(), (224, 224));
    }
}
