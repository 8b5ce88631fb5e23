//! The toy world's generator: deterministic, and its pictures agree with their captions.

use moslora::toyworld::world::{self, CaptionStyle, Content, Scene, World, COLOURS};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn the_same_seed_and_index_give_the_same_picture() {
    let (a, b) = (World::new(7), World::new(7));
    for i in [0u64, 1, 17, 999_999] {
        let (p, q) = (a.picture(i), b.picture(i));
        assert_eq!(p.caption, q.caption);
        assert_eq!(p.image.as_raw(), q.image.as_raw(), "picture {i}");
    }
    let other = World::new(8);
    let differ = (0..20u64)
        .filter(|&i| a.picture(i).image.as_raw() != other.picture(i).image.as_raw())
        .count();
    assert_eq!(differ, 20, "another seed must give other pictures");
}

#[test]
fn captions_cover_the_world_and_name_what_is_drawn() {
    let w = World::new(0);
    let mut classes = std::collections::BTreeSet::new();
    let mut scenes = std::collections::BTreeSet::new();
    let mut styles = std::collections::BTreeSet::new();
    for i in 0..2000u64 {
        let c = w.content(i);
        let cap = c.caption();
        assert!(cap.starts_with("a photo of "), "{cap}");
        styles.insert(format!("{:?}", c.caption_style));
        if let Some(k) = c.class {
            classes.insert(k);
            assert!(cap.contains(world::CLASSES[k].name), "{cap}");
        }
        match c.caption_style {
            CaptionStyle::Full => {
                assert!(cap.contains(COLOURS[c.colour].0) && cap.ends_with(c.scene.phrase()))
            }
            CaptionStyle::ObjectOnly => assert!(cap.contains(COLOURS[c.colour].0)),
            CaptionStyle::NoColour => assert!(cap.ends_with(c.scene.phrase())),
            CaptionStyle::SceneOnly => assert!(c.class.is_none() && cap.contains(c.scene.alone())),
        }
        scenes.insert(c.scene.name());
    }
    assert_eq!(classes.len(), world::CLASSES.len());
    assert_eq!(scenes.len(), Scene::ALL.len());
    assert_eq!(styles.len(), 4);
    // DreamBench's split: at least 8 objects (one a generic robot) and 2 live classes.
    let live = world::CLASSES
        .iter()
        .filter(|c| c.kind == world::Kind::Live)
        .count();
    assert!(live >= 2 && world::CLASSES.len() - live >= 8);
    assert!(world::CLASSES.iter().any(|c| c.name == "robot"));
    assert!(COLOURS.len() >= 8 && Scene::ALL.len() >= 6);
}

/// Hue in degrees and saturation of an RGB pixel.
fn hue_sat(p: [u8; 3]) -> (f32, f32, f32) {
    let [r, g, b] = p.map(|v| v as f32 / 255.0);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * (((g - b) / d).rem_euclid(6.0))
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    (h, if max > 0.0 { d / max } else { 0.0 }, max)
}

/// Share of the object's box whose pixels look like colour `c` (by hue for chromatic
/// colours, by value for white and black).
fn share_like(img: &image::RgbImage, bbox: (u32, u32, u32, u32), c: [u8; 3]) -> f32 {
    let (ch, cs, cv) = hue_sat(c);
    let (x0, y0, x1, y1) = bbox;
    let mut n = 0;
    let mut hits = 0;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (h, s, v) = hue_sat(img.get_pixel(x, y).0);
            n += 1;
            let like = if cs < 0.2 {
                s < 0.2 && (v - cv).abs() < 0.2
            } else {
                let dh = (h - ch).abs().min(360.0 - (h - ch).abs());
                dh < 18.0 && s > 0.3 && (v - cv).abs() < 0.35
            };
            hits += like as u32;
        }
    }
    hits as f32 / n.max(1) as f32
}

#[test]
fn an_objects_pixels_have_the_colour_its_caption_names() {
    // The same layout and light drawn in two colours: the box must look more like the
    // named colour when drawn in it than when drawn in another.
    let mut checked = 0;
    for i in 0..120u64 {
        let class = (i % world::CLASSES.len() as u64) as usize;
        let scene = Scene::ALL[(i / 10) as usize % Scene::ALL.len()];
        let (a, b) = ((i % 10) as usize, ((i + 3) % 10) as usize);
        let content = |colour| Content {
            class: Some(class),
            colour,
            scene,
            shiny: false,
            caption_style: CaptionStyle::Full,
        };
        let draw = |colour| world::draw(&content(colour), &mut ChaCha8Rng::seed_from_u64(i), None);
        let (pa, pb) = (draw(a), draw(b));
        let bbox = pa.bbox.expect("objects have a box");
        assert_eq!(Some(bbox), pb.bbox, "same layout");
        let in_a = share_like(&pa.image, bbox, COLOURS[a].1);
        let in_b = share_like(&pb.image, bbox, COLOURS[a].1);
        assert!(
            in_a > in_b + 0.02,
            "{}: {} drawn in {} covers {in_a:.3} of its box, drawn in {} {in_b:.3}",
            pa.caption,
            world::CLASSES[class].name,
            COLOURS[a].0,
            COLOURS[b].0
        );
        checked += 1;
    }
    assert_eq!(checked, 120);
}

#[test]
fn scenes_look_like_their_names() {
    // Mean colour of the bottom rows (the ground) of scene-only pictures.
    let ground = |scene: Scene| -> [f32; 3] {
        let mut sum = [0f32; 3];
        let mut n = 0f32;
        for seed in 0..8u64 {
            let c = Content {
                class: None,
                colour: 0,
                scene,
                shiny: false,
                caption_style: CaptionStyle::SceneOnly,
            };
            let p = world::draw(&c, &mut ChaCha8Rng::seed_from_u64(seed), None);
            for y in 58..64 {
                for x in 0..64 {
                    let px = p.image.get_pixel(x, y).0;
                    for k in 0..3 {
                        sum[k] += px[k] as f32;
                    }
                    n += 1.0;
                }
            }
        }
        sum.map(|s| s / n)
    };
    let [r, g, b] = ground(Scene::Snow);
    assert!(r.min(g).min(b) > 180.0, "snow is white: {r} {g} {b}");
    let [r, g, b] = ground(Scene::Night);
    assert!(r.max(g).max(b) < 60.0, "night is dark: {r} {g} {b}");
    let [r, g, b] = ground(Scene::Grass);
    assert!(g > r + 40.0 && g > b + 40.0, "grass is green: {r} {g} {b}");
    let [r, g, b] = ground(Scene::Water);
    assert!(b > r + 60.0, "water is blue: {r} {g} {b}");
    let [r, g, b] = ground(Scene::Beach);
    assert!(
        r > b + 40.0 && r > 180.0,
        "sand is light and warm: {r} {g} {b}"
    );
    let [r, g, b] = ground(Scene::WoodenFloor);
    assert!(
        r > g + 25.0 && g > b + 15.0 && r < 200.0,
        "wood is brown: {r} {g} {b}"
    );
}

/// The subjects' photos shipped in `assets/subjects/` (for sweeps) are what the generator
/// draws (`moslora world --subjects assets/subjects` remakes them), and none of them is a
/// world picture: the world never draws a subject's markings. Their masks (masked training)
/// are the generator's too, and cover the subject: some of the picture, not all of it.
#[test]
fn the_shipped_subject_photos_are_the_generators() {
    use moslora::toyworld::subjects::{mask, photo, SUBJECTS};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/subjects");
    let list = std::fs::read_to_string(dir.join("subjects.txt")).unwrap();
    for s in &SUBJECTS {
        assert!(
            list.lines()
                .any(|l| l.starts_with(&format!("{} {} ", s.name, s.class))),
            "subjects.txt does not list {}",
            s.name
        );
        for i in 0..5u64 {
            let path = dir.join(s.name).join(format!("{:02}.png", i + 1));
            let shipped = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8();
            assert!(
                shipped == photo(s, i),
                "{} differs from the generator's photo {i} of {}",
                path.display(),
                s.name
            );
            let path = dir.join(s.name).join(format!("{:02}.mask.png", i + 1));
            let shipped = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_luma8();
            let m = mask(s, i);
            assert!(
                shipped == m,
                "{} differs from the generator's",
                path.display()
            );
            let white = m.pixels().filter(|p| p[0] == 255).count() as f64;
            let share = white / (m.width() * m.height()) as f64;
            assert!(
                (0.03..0.6).contains(&share),
                "{}: the subject covers {:.1} % of the photo",
                path.display(),
                100.0 * share
            );
        }
    }
}
