//! Subjects the world does not contain: particular things with markings no world picture has,
//! for DreamBooth to learn (the bundled robot of `assets/subject/` is the first; these are the
//! rest, objects and live ones as in DreamBench).

use std::path::Path;

use image::{DynamicImage, GrayImage, Luma, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::world::{self, CaptionStyle, Content, Kind, Placement, Scene};
use crate::error::Result;
use crate::fsutil::write_png;

/// A subject: its folder name, class noun (a world class), kind, and how it is drawn.
pub struct Subject {
    pub name: &'static str,
    pub class: &'static str,
    pub kind: Kind,
    /// Base colour index (into [`world::COLOURS`]) passed to the class drawing.
    colour: usize,
    /// Markings drawn over the class's shape.
    mark: fn(&mut RgbImage, &Placement),
}

pub const SUBJECTS: [Subject; 5] = [
    Subject {
        name: "spotted_cat",
        class: "cat",
        kind: Kind::Live,
        colour: 7,
        mark: spotted_cat,
    },
    Subject {
        name: "patched_dog",
        class: "dog",
        kind: Kind::Live,
        colour: 2,
        mark: patched_dog,
    },
    Subject {
        name: "striped_cup",
        class: "cup",
        kind: Kind::Object,
        colour: 7,
        mark: striped_cup,
    },
    Subject {
        name: "gift_box",
        class: "box",
        kind: Kind::Object,
        colour: 4,
        mark: gift_box,
    },
    Subject {
        name: "star_ball",
        class: "ball",
        kind: Kind::Object,
        colour: 5,
        mark: star_ball,
    },
];

pub fn by_name(name: &str) -> Option<&'static Subject> {
    SUBJECTS.iter().find(|s| s.name == name)
}

fn px(v: f32) -> i32 {
    v.round() as i32
}

fn dot(img: &mut RgbImage, x: f32, y: f32, r: f32, c: [u8; 3]) {
    draw_filled_circle_mut(img, (px(x), px(y)), px(r).max(1), image::Rgb(c));
}

fn bar(img: &mut RgbImage, x0: f32, y0: f32, x1: f32, y1: f32, c: [u8; 3]) {
    let w = (px(x1) - px(x0)).max(1) as u32;
    let h = (px(y1) - px(y0)).max(1) as u32;
    draw_filled_rect_mut(img, Rect::at(px(x0), px(y0)).of_size(w, h), image::Rgb(c));
}

/// A white cat with two black patches, a black tail tip and a blue collar.
fn spotted_cat(img: &mut RgbImage, p: &Placement) {
    let (cx, g, s) = (p.cx, p.ground, p.size);
    let sign = if p.flip { -1.0 } else { 1.0 };
    dot(
        img,
        cx + sign * 0.1 * s,
        g - 0.35 * s,
        0.11 * s,
        [25, 25, 25],
    );
    dot(
        img,
        cx - sign * 0.1 * s,
        g - 0.18 * s,
        0.08 * s,
        [25, 25, 25],
    );
    dot(
        img,
        cx + sign * 0.09 * s,
        g - 0.8 * s,
        0.07 * s,
        [25, 25, 25],
    );
    bar(
        img,
        cx - 0.17 * s,
        g - 0.56 * s,
        cx + 0.17 * s,
        g - 0.51 * s,
        [30, 90, 230],
    );
    dot(img, cx, g - 0.5 * s, 0.04 * s, [250, 210, 40]);
}

/// A yellow dog with a brown patch over one eye and a red collar.
fn patched_dog(img: &mut RgbImage, p: &Placement) {
    let (cx, g, s) = (p.cx, p.ground, p.size);
    let fx = |dx: f32| if p.flip { cx - dx * s } else { cx + dx * s };
    dot(img, fx(0.42), g - 0.72 * s, 0.07 * s, [110, 60, 25]);
    dot(img, fx(0.42), g - 0.72 * s, 0.025 * s, [20, 20, 20]);
    dot(img, fx(-0.1), g - 0.48 * s, 0.09 * s, [110, 60, 25]);
    let (a, b) = (fx(0.28), fx(0.34));
    bar(
        img,
        a.min(b),
        g - 0.66 * s,
        a.max(b),
        g - 0.5 * s,
        [220, 30, 30],
    );
}

/// A white cup with red horizontal stripes and a yellow star dot.
fn striped_cup(img: &mut RgbImage, p: &Placement) {
    let (cx, g, s) = (p.cx, p.ground, p.size);
    for k in 0..3 {
        let y = g - (0.15 + 0.18 * k as f32) * s;
        bar(
            img,
            cx - 0.27 * s,
            y - 0.05 * s,
            cx + 0.27 * s,
            y,
            [215, 30, 40],
        );
    }
    dot(img, cx, g - 0.52 * s, 0.05 * s, [250, 210, 30]);
}

/// A blue box tied with a yellow ribbon and a bow.
fn gift_box(img: &mut RgbImage, p: &Placement) {
    let (cx, g, s) = (p.cx, p.ground, p.size);
    bar(
        img,
        cx - 0.05 * s,
        g - 0.8 * s,
        cx + 0.05 * s,
        g,
        [250, 210, 40],
    );
    bar(
        img,
        cx - 0.4 * s,
        g - 0.45 * s,
        cx + 0.4 * s,
        g - 0.36 * s,
        [250, 210, 40],
    );
    dot(img, cx - 0.09 * s, g - 0.86 * s, 0.08 * s, [250, 210, 40]);
    dot(img, cx + 0.09 * s, g - 0.86 * s, 0.08 * s, [250, 210, 40]);
}

/// A purple ball with a white band and a white five-point star mark.
fn star_ball(img: &mut RgbImage, p: &Placement) {
    let (cx, g, s) = (p.cx, p.ground, p.size);
    let (x, y, r) = (cx, g - 0.42 * s, 0.42 * s);
    bar(
        img,
        x - r * 0.95,
        y - 0.05 * s,
        x + r * 0.95,
        y + 0.05 * s,
        [250, 250, 250],
    );
    let pts: Vec<(f32, f32)> = (0..5)
        .map(|k| {
            let a = -std::f32::consts::FRAC_PI_2 + k as f32 * 4.0 * std::f32::consts::PI / 5.0;
            (x + 0.2 * s * a.cos(), y - 0.2 * s + 0.2 * s * a.sin())
        })
        .collect();
    for k in 0..5 {
        let (a, b) = (pts[k], pts[(k + 1) % 5]);
        for d in [-1.0, 0.0, 1.0] {
            draw_line_segment_mut(
                img,
                (a.0 + d, a.1),
                (b.0 + d, b.1),
                image::Rgb([250, 250, 250]),
            );
        }
    }
}

/// Scenes of the photos: a few places, as a person photographs their own pet or object.
const PHOTO_SCENES: [Scene; 5] = [
    Scene::Grass,
    Scene::WoodenFloor,
    Scene::City,
    Scene::Beach,
    Scene::Snow,
];

/// Photo `i` of `subject` (64 x 64, like the world's pictures).
pub fn photo(subject: &Subject, i: u64) -> RgbImage {
    draw_photo(subject, i, true)
}

/// The mask of photo `i` of `subject` (`train.masked_loss`): white where the subject is. The
/// generator knows: it draws the photo again with the same draws but no subject, and every
/// pixel that differs is the subject's (anti-aliased edges included; where the water's
/// surface covers the subject's lowest part, that part is background).
pub fn mask(subject: &Subject, i: u64) -> GrayImage {
    let (with, without) = (draw_photo(subject, i, true), draw_photo(subject, i, false));
    GrayImage::from_fn(with.width(), with.height(), |x, y| {
        let same = with.get_pixel(x, y) == without.get_pixel(x, y);
        Luma([if same { 0 } else { 255 }])
    })
}

/// Photo `i` of `subject`, or with `paint` false the same picture without the subject (the
/// subject's drawing takes nothing from the generator, so the rest is drawn alike).
fn draw_photo(subject: &Subject, i: u64, paint: bool) -> RgbImage {
    let class = world::CLASSES
        .iter()
        .position(|c| c.name == subject.class)
        .expect("subjects use world classes");
    let content = Content {
        class: Some(class),
        colour: subject.colour,
        scene: PHOTO_SCENES[i as usize % PHOTO_SCENES.len()],
        shiny: false,
        caption_style: CaptionStyle::Full,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0000 + i);
    rng.set_stream(
        subject
            .name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
    );
    let painter = |img: &mut RgbImage, p: &Placement, _: &mut ChaCha8Rng| {
        if paint {
            world::draw_object(img, subject.class, p);
            (subject.mark)(img, p);
        }
    };
    world::draw(&content, &mut rng, Some(&painter)).image
}

/// Write `count` photos of `subject` into `dir` as PNGs, each with its mask beside it
/// (`01.png`, `01.mask.png`, ...).
pub fn write_photos(subject: &Subject, dir: &Path, count: u64) -> Result<()> {
    for i in 0..count {
        let path = dir.join(format!("{:02}.png", i + 1));
        write_png(&path, &photo(subject, i), &[])?;
        let path = dir.join(format!("{:02}.mask.png", i + 1));
        let mut png = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageLuma8(mask(subject, i))
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| crate::error::Error::msg(format!("{}: {e}", path.display())))?;
        crate::fsutil::write_bytes(&path, &png.into_inner())?;
    }
    Ok(())
}
