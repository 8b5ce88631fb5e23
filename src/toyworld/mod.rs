//! The toy world: a procedural world of captioned pictures, a small SDXL-architecture model
//! pretrained on it, and the subjects it does not contain. It exists so that personalisation
//! can be seen and measured on a machine with no GPU and no downloads; it uses the same code
//! paths as real SDXL, and nothing in the product special-cases it.

pub mod judge;
pub mod pretrain;
pub mod subjects;
pub mod vocab;
pub mod world;

use world::{Scene, CLASSES, COLOURS};

/// Every word the world's captions use (the reduced vocabulary covers these and the bundled
/// prompt lists).
pub fn world_vocabulary() -> Vec<String> {
    let mut v: Vec<String> = vec![
        "a photo of a an the shiny sks toy [V] {class}".into(),
        "robot cat cup dog".into(),
    ];
    v.extend(CLASSES.iter().map(|c| c.name.to_string()));
    v.extend(COLOURS.iter().map(|c| c.0.to_string()));
    v.extend(
        Scene::ALL
            .iter()
            .map(|s| format!("{} {}", s.phrase(), s.alone())),
    );
    v
}

/// Pictures `0..count` of the world seeded `seed`, tiled `cols` to a row at `zoom` times their
/// size, with their captions in order (a contact sheet to look at the world).
pub fn contact_sheet(
    seed: u64,
    count: u64,
    cols: u32,
    zoom: u32,
) -> (image::RgbImage, Vec<String>) {
    let w = world::World::new(seed);
    let side = world::SIZE * zoom;
    let rows = (count as u32).div_ceil(cols);
    let mut page = image::RgbImage::from_pixel(
        cols * (side + 2) + 2,
        rows * (side + 2) + 2,
        image::Rgb([255, 255, 255]),
    );
    let mut captions = Vec::new();
    for i in 0..count {
        let p = w.picture(i);
        let big =
            image::imageops::resize(&p.image, side, side, image::imageops::FilterType::Nearest);
        let (r, c) = (i as u32 / cols, i as u32 % cols);
        image::imageops::replace(
            &mut page,
            &big,
            (2 + c * (side + 2)) as i64,
            (2 + r * (side + 2)) as i64,
        );
        captions.push(p.caption);
    }
    (page, captions)
}
