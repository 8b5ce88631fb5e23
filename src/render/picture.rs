//! Pictures: PNG files with text metadata, labels drawn with the bundled font, and grids.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT).expect("the bundled font parses")
}

/// Width in pixels of `text` at `size`.
pub fn text_width(text: &str, size: f32) -> f32 {
    let f = font();
    let sf = f.as_scaled(PxScale::from(size));
    text.chars().map(|c| sf.h_advance(f.glyph_id(c))).sum()
}

/// Draw `text` with its top-left corner at (x, y), blending by glyph coverage.
pub fn draw_text(img: &mut RgbImage, text: &str, x: f32, y: f32, size: f32, color: Rgb<u8>) {
    let f = font();
    let scale = PxScale::from(size);
    let sf = f.as_scaled(scale);
    let mut caret = x;
    let baseline = y + sf.ascent();
    for c in text.chars() {
        let id = f.glyph_id(c);
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, baseline));
        caret += sf.h_advance(id);
        let Some(outlined) = f.outline_glyph(glyph) else {
            continue;
        };
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, cov| {
            let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if px < 0 || py < 0 || px >= img.width() as i64 || py >= img.height() as i64 {
                return;
            }
            let p = img.get_pixel_mut(px as u32, py as u32);
            for k in 0..3 {
                p[k] = (p[k] as f32 * (1.0 - cov) + color[k] as f32 * cov).round() as u8;
            }
        });
    }
}

/// Shorten `text` with an ellipsis so that it fits `max_width` pixels at `size`.
pub fn fit_text(text: &str, size: f32, max_width: f32) -> String {
    if text_width(text, size) <= max_width {
        return text.to_string();
    }
    let mut s: String = text.to_string();
    while !s.is_empty() && text_width(&format!("{s}…"), size) > max_width {
        s.pop();
    }
    format!("{s}…")
}

/// A label for `max_width` pixels: at `size` when it fits, else at a smaller size (down to
/// 60 % of `size`, so "MoSLoRA" still reads whole over a small picture), and only then
/// shortened with an ellipsis. The text and the size to draw it at.
pub fn fit_label(text: &str, size: f32, max_width: f32) -> (String, f32) {
    let w = text_width(text, size);
    if w <= max_width {
        return (text.to_string(), size);
    }
    // Widths do not scale exactly with the size (glyph advances round), so step down to a fit.
    let least = size * 0.6;
    let mut smaller = (size * max_width / w).max(least);
    while smaller > least && text_width(text, smaller) > max_width {
        smaller = (smaller * 0.97).max(least);
    }
    (fit_text(text, smaller, max_width), smaller)
}

/// The layout of a labelled grid, kept so tests can check cell positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridLayout {
    pub cell_w: u32,
    pub cell_h: u32,
    pub rows: u32,
    pub cols: u32,
    /// Left margin (row labels) and top margin (title and column labels).
    pub left: u32,
    pub top: u32,
    pub gap: u32,
}

impl GridLayout {
    pub fn new(cell_w: u32, cell_h: u32, rows: u32, cols: u32) -> Self {
        let label = (cell_w.min(cell_h) / 8).clamp(12, 28);
        GridLayout {
            cell_w,
            cell_h,
            rows,
            cols,
            left: label * 4,
            top: label * 4,
            gap: 4,
        }
    }
    pub fn label_size(&self) -> f32 {
        (self.cell_w.min(self.cell_h) / 8).clamp(12, 28) as f32
    }
    pub fn width(&self) -> u32 {
        self.left + self.cols * (self.cell_w + self.gap) + self.gap
    }
    pub fn height(&self) -> u32 {
        self.top + self.rows * (self.cell_h + self.gap) + self.gap
    }
    /// Top-left pixel of cell (row, col).
    pub fn cell_origin(&self, row: u32, col: u32) -> (u32, u32) {
        (
            self.left + self.gap + col * (self.cell_w + self.gap),
            self.top + self.gap + row * (self.cell_h + self.gap),
        )
    }
}

/// A grid of equally sized images with a title, column labels on top and row labels on the
/// left, on a white page.
pub fn grid(
    title: &str,
    col_labels: &[String],
    row_labels: &[String],
    cells: &[Vec<RgbImage>],
) -> (RgbImage, GridLayout) {
    let (cw, ch) = cells[0][0].dimensions();
    let layout = GridLayout::new(cw, ch, cells.len() as u32, col_labels.len() as u32);
    let mut page = RgbImage::from_pixel(layout.width(), layout.height(), Rgb([255, 255, 255]));
    let size = layout.label_size();
    let ink = Rgb([20, 20, 20]);
    let title = fit_text(title, size, (layout.width() - 2 * layout.gap) as f32);
    draw_text(
        &mut page,
        &title,
        layout.gap as f32 + 2.0,
        size * 0.3,
        size,
        ink,
    );
    for (c, label) in col_labels.iter().enumerate() {
        let (x, _) = layout.cell_origin(0, c as u32);
        let (text, at) = fit_label(label, size, cw as f32);
        let w = text_width(&text, at);
        draw_text(
            &mut page,
            &text,
            x as f32 + (cw as f32 - w) / 2.0,
            layout.top as f32 - size * 1.5 + (size - at),
            at,
            ink,
        );
    }
    for (r, row) in cells.iter().enumerate() {
        let (_, y) = layout.cell_origin(r as u32, 0);
        let text = fit_text(&row_labels[r], size * 0.8, (layout.left - 6) as f32);
        draw_text(
            &mut page,
            &text,
            4.0,
            y as f32 + ch as f32 / 2.0 - size * 0.5,
            size * 0.8,
            ink,
        );
        for (c, img) in row.iter().enumerate() {
            let (x, y) = layout.cell_origin(r as u32, c as u32);
            image::imageops::replace(&mut page, img, x as i64, y as i64);
        }
    }
    (page, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_shrink_before_they_are_cut() {
        let w = text_width("MoSLoRA", 12.0);
        // A little too wide: drawn smaller, whole.
        let (t, size) = fit_label("MoSLoRA", 12.0, w * 0.8);
        assert_eq!(t, "MoSLoRA");
        assert!(size < 12.0 && text_width(&t, size) <= w * 0.8 + 0.01);
        // Fits: unchanged.
        assert_eq!(
            fit_label("MoSLoRA", 12.0, w + 1.0),
            ("MoSLoRA".to_string(), 12.0)
        );
        // Far too wide: the smallest size, then an ellipsis.
        let (t, size) = fit_label("MoSLoRA (orthogonal mixer)", 12.0, w);
        assert!((size - 7.2).abs() < 1e-4 && t.ends_with('…'), "{t} {size}");
        assert!(text_width(&t, size) <= w);
    }
}
