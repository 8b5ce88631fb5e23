//! The toy world: a deterministic procedural generator of captioned pictures.
//!
//! Classes, colours and scenes follow DreamBench's split and prompt lists: eight object classes
//! (one of them a generic toy robot) and two live ones (dog, cat); ten colours; eight scenes
//! whose caption phrases are the ones the DreamBooth prompt lists use ("on the beach", "in the
//! snow", "floating on top of water", ...); two drawable properties ("shiny", and the colour
//! changes themselves). Every picture is drawn at twice its size and averaged down, so edges
//! are smooth, then lit by a random brightness and tint.
//!
//! A picture is a pure function of `(seed, index)`: the same pair gives the same pixels and
//! caption on every machine (ChaCha's stream is fixed across `rand` versions).

use image::{imageops, Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_filled_ellipse_mut, draw_filled_rect_mut, draw_line_segment_mut,
    draw_polygon_mut,
};
use imageproc::point::Point;
use imageproc::rect::Rect;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The side of a world picture, in pixels.
pub const SIZE: u32 = 64;
/// Pictures are drawn this many times larger, then averaged down.
const SUPER: u32 = 2;
const CANVAS: f32 = (SIZE * SUPER) as f32;

pub use crate::render::prompts::Kind;

#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub name: &'static str,
    pub kind: Kind,
}

pub const CLASSES: [Class; 10] = [
    Class {
        name: "ball",
        kind: Kind::Object,
    },
    Class {
        name: "box",
        kind: Kind::Object,
    },
    Class {
        name: "house",
        kind: Kind::Object,
    },
    Class {
        name: "tree",
        kind: Kind::Object,
    },
    Class {
        name: "car",
        kind: Kind::Object,
    },
    Class {
        name: "cup",
        kind: Kind::Object,
    },
    Class {
        name: "robot",
        kind: Kind::Object,
    },
    Class {
        name: "bottle",
        kind: Kind::Object,
    },
    Class {
        name: "dog",
        kind: Kind::Live,
    },
    Class {
        name: "cat",
        kind: Kind::Live,
    },
];

pub const COLOURS: [(&str, [u8; 3]); 10] = [
    ("red", [210, 40, 35]),
    ("orange", [245, 140, 30]),
    ("yellow", [245, 215, 40]),
    ("green", [50, 170, 60]),
    ("blue", [40, 80, 220]),
    ("purple", [140, 60, 190]),
    ("pink", [245, 130, 190]),
    ("white", [245, 245, 240]),
    ("black", [30, 30, 35]),
    ("brown", [130, 80, 40]),
];

/// Scenes, named by the phrase the DreamBooth prompt lists use for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    Beach,
    Snow,
    Grass,
    Jungle,
    City,
    Water,
    WoodenFloor,
    Night,
}

impl Scene {
    pub const ALL: [Scene; 8] = [
        Scene::Beach,
        Scene::Snow,
        Scene::Grass,
        Scene::Jungle,
        Scene::City,
        Scene::Water,
        Scene::WoodenFloor,
        Scene::Night,
    ];

    /// The caption phrase that follows the object ("a red ball on the beach").
    pub fn phrase(self) -> &'static str {
        match self {
            Scene::Beach => "on the beach",
            Scene::Snow => "in the snow",
            Scene::Grass => "on top of green grass",
            Scene::Jungle => "in the jungle",
            Scene::City => "with a city in the background",
            Scene::Water => "floating on top of water",
            Scene::WoodenFloor => "on top of a wooden floor",
            Scene::Night => "at night",
        }
    }

    /// The caption of the scene alone ("a photo of the beach").
    pub fn alone(self) -> &'static str {
        match self {
            Scene::Beach => "the beach",
            Scene::Snow => "the snow",
            Scene::Grass => "green grass",
            Scene::Jungle => "the jungle",
            Scene::City => "a city",
            Scene::Water => "water",
            Scene::WoodenFloor => "a wooden floor",
            Scene::Night => "the night",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scene::Beach => "beach",
            Scene::Snow => "snow",
            Scene::Grass => "grass",
            Scene::Jungle => "jungle",
            Scene::City => "city",
            Scene::Water => "water",
            Scene::WoodenFloor => "wooden floor",
            Scene::Night => "night",
        }
    }
}

/// What a picture shows: the caption is made from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    /// Index into [`CLASSES`], or None for a scene-only picture.
    pub class: Option<usize>,
    /// Index into [`COLOURS`].
    pub colour: usize,
    pub scene: Scene,
    pub shiny: bool,
    /// Which words the caption leaves out (the picture is the same).
    pub caption_style: CaptionStyle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptionStyle {
    /// "a photo of a red ball on the beach"
    Full,
    /// "a photo of a red ball"
    ObjectOnly,
    /// "a photo of a ball on the beach" (colour left unsaid)
    NoColour,
    /// "a photo of the beach" (no object drawn)
    SceneOnly,
}

impl Content {
    pub fn caption(&self) -> String {
        let object = |with_colour: bool| {
            let class = CLASSES[self.class.expect("object captions have a class")].name;
            let mut words = Vec::new();
            if self.shiny {
                words.push("shiny");
            }
            if with_colour {
                words.push(COLOURS[self.colour].0);
            }
            words.push(class);
            let phrase = words.join(" ");
            let article = if phrase.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {phrase}")
        };
        match self.caption_style {
            CaptionStyle::Full => format!("a photo of {} {}", object(true), self.scene.phrase()),
            CaptionStyle::ObjectOnly => format!("a photo of {}", object(true)),
            CaptionStyle::NoColour => {
                format!("a photo of {} {}", object(false), self.scene.phrase())
            }
            CaptionStyle::SceneOnly => format!("a photo of {}", self.scene.alone()),
        }
    }
}

/// One captioned picture of the world, with where its object is (for checks and judges).
pub struct Picture {
    pub content: Content,
    pub caption: String,
    pub image: RgbImage,
    /// The object's bounding box in output pixels (x0, y0, x1, y1), if there is one.
    pub bbox: Option<(u32, u32, u32, u32)>,
}

/// A generator seeded once; picture `i` depends only on (seed, i).
pub struct World {
    seed: u64,
}

impl World {
    pub fn new(seed: u64) -> Self {
        World { seed }
    }

    fn rng(&self, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);
        rng
    }

    /// What picture `index` shows.
    pub fn content(&self, index: u64) -> Content {
        let mut rng = self.rng(index);
        let style = match rng.random_range(0..100) {
            0..70 => CaptionStyle::Full,
            70..80 => CaptionStyle::ObjectOnly,
            80..92 => CaptionStyle::NoColour,
            _ => CaptionStyle::SceneOnly,
        };
        Content {
            class: (style != CaptionStyle::SceneOnly).then(|| rng.random_range(0..CLASSES.len())),
            colour: rng.random_range(0..COLOURS.len()),
            scene: Scene::ALL[rng.random_range(0..Scene::ALL.len())],
            shiny: style != CaptionStyle::SceneOnly && rng.random_bool(0.12),
            caption_style: style,
        }
    }

    pub fn picture(&self, index: u64) -> Picture {
        let content = self.content(index);
        // A second stream for the drawing, so the content's draws never shift the layout's.
        let mut rng = self.rng(index ^ (1 << 63));
        draw(&content, &mut rng, None)
    }
}

/// Something drawn in place of a world object: the bundled subjects use this.
pub type Painter<'a> = dyn Fn(&mut RgbImage, &Placement, &mut ChaCha8Rng) + 'a;

/// Where an object stands on the canvas (drawing pixels).
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Centre x and ground line y of the object.
    pub cx: f32,
    pub ground: f32,
    /// Height scale of the object.
    pub size: f32,
    pub flip: bool,
    pub colour: [u8; 3],
    pub shiny: bool,
}

/// Draw `content` (or `painter` in place of its object) with layout from `rng`.
pub fn draw(content: &Content, rng: &mut ChaCha8Rng, painter: Option<&Painter<'_>>) -> Picture {
    let mut img = RgbImage::new(SIZE * SUPER, SIZE * SUPER);
    let horizon = CANVAS * rng.random_range(0.5..0.66);
    draw_scene(&mut img, content.scene, horizon, rng);
    let mut bbox = None;
    if content.class.is_some() || painter.is_some() {
        let size = CANVAS * rng.random_range(0.34..0.5);
        let ground = (horizon + rng.random_range(0.12..0.3) * (CANVAS - horizon)).min(CANVAS - 4.0);
        let cx = CANVAS * rng.random_range(0.32..0.68);
        let p = Placement {
            cx,
            ground,
            size,
            flip: rng.random_bool(0.5),
            colour: COLOURS[content.colour].1,
            shiny: content.shiny,
        };
        match (painter, content.class) {
            (Some(paint), _) => paint(&mut img, &p, rng),
            (None, Some(c)) => draw_object(&mut img, CLASSES[c].name, &p),
            (None, None) => {}
        }
        if content.scene == Scene::Water {
            // Floating: the water's surface covers the object's lowest part.
            let y = ground - 0.12 * size;
            wave_band(&mut img, y, CANVAS, [40, 110, 190]);
        }
        let s = SUPER as f32;
        let half = 0.45 * size;
        bbox = Some((
            ((cx - half).max(0.0) / s) as u32,
            ((ground - 1.2 * size).max(0.0) / s) as u32,
            ((cx + half).min(CANVAS - 1.0) / s) as u32,
            ((ground).min(CANVAS - 1.0) / s) as u32,
        ));
    }
    let mut small = imageops::resize(&img, SIZE, SIZE, imageops::FilterType::Triangle);
    light(&mut small, content.scene, rng);
    Picture {
        caption: content.caption(),
        content: content.clone(),
        image: small,
        bbox,
    }
}

/// Brightness and a slight colour cast: the world's "light".
fn light(img: &mut RgbImage, scene: Scene, rng: &mut ChaCha8Rng) {
    let gain = if scene == Scene::Night {
        rng.random_range(0.75..0.95)
    } else {
        rng.random_range(0.85..1.12)
    };
    let tint: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.95..1.05));
    for p in img.pixels_mut() {
        for (v, t) in p.0.iter_mut().zip(tint) {
            *v = (*v as f32 * gain * t).round().clamp(0.0, 255.0) as u8;
        }
    }
}

fn rgb(c: [u8; 3]) -> Rgb<u8> {
    Rgb(c)
}

fn shade(c: [u8; 3], f: f32) -> [u8; 3] {
    c.map(|v| (v as f32 * f).clamp(0.0, 255.0) as u8)
}

fn jitter(c: [u8; 3], rng: &mut ChaCha8Rng, amount: i32) -> [u8; 3] {
    c.map(|v| (v as i32 + rng.random_range(-amount..=amount)).clamp(0, 255) as u8)
}

fn rect(img: &mut RgbImage, x0: f32, y0: f32, x1: f32, y1: f32, c: [u8; 3]) {
    let (x0, y0) = (x0.round() as i32, y0.round() as i32);
    let (w, h) = (
        (x1.round() as i32 - x0).max(1),
        (y1.round() as i32 - y0).max(1),
    );
    draw_filled_rect_mut(img, Rect::at(x0, y0).of_size(w as u32, h as u32), rgb(c));
}

fn poly(img: &mut RgbImage, pts: &[(f32, f32)], c: [u8; 3]) {
    let mut v: Vec<Point<i32>> = pts
        .iter()
        .map(|&(x, y)| Point::new(x.round() as i32, y.round() as i32))
        .collect();
    v.dedup();
    if v.len() > 2 && v.first() == v.last() {
        v.pop();
    }
    if v.len() >= 3 {
        draw_polygon_mut(img, &v, rgb(c));
    }
}

fn circle(img: &mut RgbImage, x: f32, y: f32, r: f32, c: [u8; 3]) {
    draw_filled_circle_mut(
        img,
        (x.round() as i32, y.round() as i32),
        r.round().max(1.0) as i32,
        rgb(c),
    );
}

fn ellipse(img: &mut RgbImage, x: f32, y: f32, rx: f32, ry: f32, c: [u8; 3]) {
    draw_filled_ellipse_mut(
        img,
        (x.round() as i32, y.round() as i32),
        rx.round().max(1.0) as i32,
        ry.round().max(1.0) as i32,
        rgb(c),
    );
}

/// A vertical gradient between two colours over rows `y0..y1`.
fn gradient(img: &mut RgbImage, y0: f32, y1: f32, top: [u8; 3], bottom: [u8; 3]) {
    let (a, b) = (y0.max(0.0) as u32, (y1.min(CANVAS)) as u32);
    for y in a..b {
        let t = (y - a) as f32 / (b - a).max(1) as f32;
        let c: [u8; 3] =
            std::array::from_fn(|i| (top[i] as f32 * (1.0 - t) + bottom[i] as f32 * t) as u8);
        for x in 0..img.width() {
            img.put_pixel(x, y, rgb(c));
        }
    }
}

fn wave_band(img: &mut RgbImage, y: f32, bottom: f32, c: [u8; 3]) {
    let w = img.width();
    for x in 0..w {
        let yy = y + 2.0 * (x as f32 * 0.25).sin();
        for row in (yy.max(0.0) as u32)..(bottom as u32).min(img.height()) {
            let p = img.get_pixel_mut(x, row);
            p.0 = std::array::from_fn(|i| ((p.0[i] as u32 + 3 * c[i] as u32) / 4) as u8);
        }
    }
}

fn draw_scene(img: &mut RgbImage, scene: Scene, horizon: f32, rng: &mut ChaCha8Rng) {
    let sky = [135, 195, 240];
    match scene {
        Scene::Beach => {
            gradient(img, 0.0, horizon, [120, 185, 240], [190, 225, 250]);
            let sea = horizon + 0.12 * (CANVAS - horizon);
            gradient(img, horizon, sea, [30, 120, 200], [60, 150, 210]);
            gradient(img, sea, CANVAS, [240, 215, 160], [225, 195, 135]);
            circle(img, CANVAS * 0.85, CANVAS * 0.12, 7.0, [255, 240, 150]);
        }
        Scene::Snow => {
            gradient(img, 0.0, horizon, [190, 205, 225], [225, 230, 240]);
            gradient(img, horizon, CANVAS, [250, 250, 252], [225, 230, 240]);
            for _ in 0..25 {
                let (x, y) = (rng.random_range(0.0..CANVAS), rng.random_range(0.0..CANVAS));
                circle(img, x, y, 1.5, [255, 255, 255]);
            }
        }
        Scene::Grass => {
            gradient(img, 0.0, horizon, sky, [200, 230, 250]);
            gradient(img, horizon, CANVAS, [90, 185, 70], [60, 150, 45]);
            for _ in 0..30 {
                let x = rng.random_range(0.0..CANVAS);
                let y = rng.random_range(horizon..CANVAS);
                draw_line_segment_mut(img, (x, y), (x + 1.5, y - 4.0), rgb([40, 120, 35]));
            }
        }
        Scene::Jungle => {
            gradient(img, 0.0, CANVAS, [20, 90, 40], [40, 120, 45]);
            for _ in 0..7 {
                let x = rng.random_range(0.0..CANVAS);
                rect(img, x, 0.0, x + 5.0, horizon + 6.0, [80, 55, 30]);
            }
            for _ in 0..14 {
                let (x, y) = (
                    rng.random_range(0.0..CANVAS),
                    rng.random_range(0.0..horizon),
                );
                let c = jitter([30, 140, 50], rng, 25);
                ellipse(img, x, y, 12.0, 6.0, c);
            }
            gradient(img, horizon, CANVAS, [70, 110, 40], [50, 85, 30]);
        }
        Scene::City => {
            gradient(img, 0.0, horizon, [170, 195, 220], [210, 215, 225]);
            let mut x = -4.0;
            while x < CANVAS {
                let w = rng.random_range(12.0..24.0);
                let h = rng.random_range(0.35..0.9) * horizon;
                let c = jitter([110, 115, 130], rng, 25);
                rect(img, x, horizon - h, x + w - 1.0, horizon, c);
                let mut wy = horizon - h + 3.0;
                while wy < horizon - 4.0 {
                    let mut wx = x + 2.0;
                    while wx < x + w - 4.0 {
                        rect(img, wx, wy, wx + 2.0, wy + 2.0, [235, 225, 150]);
                        wx += 5.0;
                    }
                    wy += 6.0;
                }
                x += w;
            }
            gradient(img, horizon, CANVAS, [150, 150, 155], [120, 120, 125]);
        }
        Scene::Water => {
            gradient(img, 0.0, horizon, sky, [200, 230, 250]);
            gradient(img, horizon, CANVAS, [50, 130, 205], [20, 80, 160]);
            for _ in 0..12 {
                let x = rng.random_range(0.0..CANVAS);
                let y = rng.random_range(horizon..CANVAS);
                draw_line_segment_mut(img, (x, y), (x + 8.0, y), rgb([150, 200, 240]));
            }
        }
        Scene::WoodenFloor => {
            gradient(img, 0.0, horizon, [235, 225, 205], [220, 205, 180]);
            gradient(img, horizon, CANVAS, [175, 120, 70], [145, 95, 50]);
            let mut y = horizon + 5.0;
            while y < CANVAS {
                draw_line_segment_mut(img, (0.0, y), (CANVAS, y), rgb([110, 70, 35]));
                y += 7.0 + (y - horizon) * 0.2;
            }
        }
        Scene::Night => {
            gradient(img, 0.0, horizon, [10, 15, 45], [30, 35, 80]);
            for _ in 0..30 {
                let (x, y) = (
                    rng.random_range(0.0..CANVAS),
                    rng.random_range(0.0..horizon),
                );
                circle(img, x, y, 0.8, [255, 255, 230]);
            }
            circle(img, CANVAS * 0.2, CANVAS * 0.15, 8.0, [245, 240, 210]);
            gradient(img, horizon, CANVAS, [35, 40, 55], [20, 25, 35]);
        }
    }
}

/// Draw one of the world's classes at `p`.
pub fn draw_object(img: &mut RgbImage, class: &str, p: &Placement) {
    let (cx, g, s, c) = (p.cx, p.ground, p.size, p.colour);
    // Mirror x around the centre when flipped.
    let fx = |dx: f32| if p.flip { cx - dx * s } else { cx + dx * s };
    let y = |dy: f32| g - dy * s;
    let dark = shade(c, 0.65);
    let outline = shade(c, 0.4);
    match class {
        "ball" => {
            let r = 0.42 * s;
            circle(img, cx, g - r, r + 1.0, outline);
            circle(img, cx, g - r, r, c);
            draw_line_segment_mut(img, (cx - r, g - r), (cx + r, g - r), rgb(shade(c, 0.75)));
        }
        "box" => {
            let w = 0.8 * s;
            let top = 0.18 * s;
            let (x0, x1) = (cx - w / 2.0, cx + w / 2.0);
            poly(
                img,
                &[
                    (x0, y(0.8)),
                    (x0 + top, y(0.8) - top),
                    (x1 + top, y(0.8) - top),
                    (x1, y(0.8)),
                ],
                shade(c, 1.2),
            );
            poly(
                img,
                &[
                    (x1, y(0.0)),
                    (x1, y(0.8)),
                    (x1 + top, y(0.8) - top),
                    (x1 + top, y(0.0) - top),
                ],
                dark,
            );
            rect(img, x0, y(0.8), x1, g, c);
        }
        "house" => {
            rect(img, cx - 0.4 * s, y(0.6), cx + 0.4 * s, g, c);
            poly(
                img,
                &[
                    (cx - 0.5 * s, y(0.6)),
                    (cx, y(1.05)),
                    (cx + 0.5 * s, y(0.6)),
                ],
                [150, 45, 40],
            );
            rect(img, fx(-0.1), y(0.3), fx(-0.1) + 0.2 * s, g, [90, 60, 35]);
            rect(
                img,
                fx(0.18),
                y(0.5),
                fx(0.18) + 0.14 * s,
                y(0.36),
                [200, 230, 250],
            );
        }
        "tree" => {
            rect(img, cx - 0.07 * s, y(0.45), cx + 0.07 * s, g, [110, 70, 35]);
            circle(img, cx, y(0.75), 0.36 * s, dark);
            circle(img, cx - 0.02 * s, y(0.78), 0.32 * s, c);
        }
        "car" => {
            let (l, r) = (cx - 0.55 * s, cx + 0.55 * s);
            rect(img, l, y(0.45), r, y(0.12), c);
            poly(
                img,
                &[
                    (fx(-0.3), y(0.45)),
                    (fx(-0.18), y(0.72)),
                    (fx(0.25), y(0.72)),
                    (fx(0.4), y(0.45)),
                ],
                c,
            );
            poly(
                img,
                &[
                    (fx(-0.2), y(0.47)),
                    (fx(-0.12), y(0.67)),
                    (fx(0.2), y(0.67)),
                    (fx(0.3), y(0.47)),
                ],
                [190, 220, 240],
            );
            for dx in [-0.32, 0.32] {
                circle(img, fx(dx), y(0.12), 0.14 * s, [25, 25, 25]);
                circle(img, fx(dx), y(0.12), 0.06 * s, [170, 170, 170]);
            }
        }
        "cup" => {
            poly(
                img,
                &[
                    (cx - 0.3 * s, y(0.7)),
                    (cx + 0.3 * s, y(0.7)),
                    (cx + 0.22 * s, g),
                    (cx - 0.22 * s, g),
                ],
                c,
            );
            let hx = fx(0.33);
            circle(img, hx, y(0.4), 0.14 * s, c);
            circle(img, hx, y(0.4), 0.07 * s, [0, 0, 0]);
            ellipse(img, cx, y(0.7), 0.3 * s, 0.06 * s, dark);
        }
        "robot" => {
            // A generic toy robot: box body, box head, round eyes, stick antenna, arms.
            rect(img, cx - 0.3 * s, y(0.6), cx + 0.3 * s, y(0.1), c);
            rect(img, cx - 0.2 * s, y(0.1), cx - 0.08 * s, g, dark);
            rect(img, cx + 0.08 * s, y(0.1), cx + 0.2 * s, g, dark);
            rect(img, cx - 0.22 * s, y(0.95), cx + 0.22 * s, y(0.62), c);
            for dx in [-0.1, 0.1] {
                circle(img, cx + dx * s, y(0.8), 0.06 * s, [250, 250, 250]);
                circle(img, cx + dx * s, y(0.8), 0.03 * s, [20, 20, 20]);
            }
            draw_line_segment_mut(img, (cx, y(0.95)), (cx, y(1.08)), rgb(outline));
            rect(img, cx - 0.42 * s, y(0.55), cx - 0.3 * s, y(0.3), dark);
            rect(img, cx + 0.3 * s, y(0.55), cx + 0.42 * s, y(0.3), dark);
        }
        "bottle" => {
            rect(img, cx - 0.16 * s, y(0.7), cx + 0.16 * s, g, c);
            rect(img, cx - 0.06 * s, y(1.0), cx + 0.06 * s, y(0.7), c);
            rect(img, cx - 0.07 * s, y(1.05), cx + 0.07 * s, y(0.98), dark);
            rect(
                img,
                cx - 0.16 * s,
                y(0.5),
                cx + 0.16 * s,
                y(0.3),
                [240, 235, 220],
            );
        }
        "dog" => {
            // Side view, facing the flip side: body, legs, head with a floppy ear, tail.
            ellipse(img, cx, y(0.45), 0.38 * s, 0.17 * s, c);
            for dx in [-0.28, -0.16, 0.16, 0.28] {
                rect(img, fx(dx) - 0.04 * s, y(0.35), fx(dx) + 0.04 * s, g, c);
            }
            circle(img, fx(0.38), y(0.68), 0.15 * s, c);
            ellipse(img, fx(0.5), y(0.64), 0.08 * s, 0.06 * s, c);
            circle(img, fx(0.56), y(0.65), 0.03 * s, [20, 20, 20]);
            ellipse(img, fx(0.32), y(0.62), 0.05 * s, 0.12 * s, dark);
            circle(img, fx(0.42), y(0.72), 0.025 * s, [20, 20, 20]);
            draw_line_segment_mut(img, (fx(-0.36), y(0.5)), (fx(-0.5), y(0.72)), rgb(c));
            draw_line_segment_mut(img, (fx(-0.37), y(0.5)), (fx(-0.51), y(0.72)), rgb(c));
        }
        "cat" => {
            // Sitting, front view: body, head with pointed ears, curled tail.
            ellipse(img, cx, y(0.3), 0.25 * s, 0.3 * s, c);
            circle(img, cx, y(0.72), 0.19 * s, c);
            for side in [-1.0, 1.0] {
                poly(
                    img,
                    &[
                        (cx + side * 0.17 * s, y(0.78)),
                        (cx + side * 0.15 * s, y(1.0)),
                        (cx + side * 0.04 * s, y(0.88)),
                    ],
                    c,
                );
                circle(img, cx + side * 0.07 * s, y(0.75), 0.035 * s, [60, 170, 60]);
            }
            ellipse(img, fx(0.3), y(0.1), 0.16 * s, 0.05 * s, dark);
            circle(img, cx, y(0.66), 0.025 * s, [230, 120, 140]);
        }
        other => unreachable!("no drawing for class {other}"),
    }
    if p.shiny {
        // A specular highlight and a second, smaller glint.
        circle(img, fx(-0.12), y(0.7), 0.07 * s, [255, 255, 255]);
        circle(img, fx(-0.02), y(0.78), 0.03 * s, [255, 255, 255]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_read_naturally() {
        let c = Content {
            class: Some(5),
            colour: 1,
            scene: Scene::Beach,
            shiny: false,
            caption_style: CaptionStyle::Full,
        };
        assert_eq!(c.caption(), "a photo of an orange cup on the beach");
        let c = Content {
            shiny: true,
            caption_style: CaptionStyle::NoColour,
            ..c
        };
        assert_eq!(c.caption(), "a photo of a shiny cup on the beach");
    }
}
