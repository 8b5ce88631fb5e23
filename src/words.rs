//! Small pieces of wording shared by every message and page: counted nouns with the right
//! plural ("1 photo", "2 photos"), a verb that agrees with its count ("1 of 5 photos has"),
//! and slugs that turn a prompt into a safe, readable file name.

/// `n` with its noun, singular for exactly one: `count(1, "rater")` is "1 rater",
/// `count(3, "rater")` "3 raters". Nouns whose plural is not `noun + s` use [`count_as`].
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {}", plural(n, noun))
}

/// `n` with the singular or the given plural: `count_as(2, "pair", "pairs")`.
pub fn count_as(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// The noun alone, singular for exactly one (`noun + s` otherwise).
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        noun.to_string()
    } else {
        format!("{noun}s")
    }
}

/// A verb agreeing with its subject's count: `verb(1, "has", "have")` is "has".
pub fn verb<'a>(n: usize, singular: &'a str, plural: &'a str) -> &'a str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

/// The longest slug [`slug`] returns, in bytes.
pub const SLUG_MAX: usize = 60;

/// A file-name-safe slug of `text`: lower-case ASCII letters and digits, every other run of
/// characters one `-`, no `-` at either end, cut at a word boundary to at most `max` bytes
/// (a word longer than `max` is cut inside). Letters with accents lose them where Unicode
/// decomposes them simply (é -> e); others drop out. Empty when nothing is left.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars() {
        let c = fold_accent(c).to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    if out.len() <= max {
        return out;
    }
    let cut = &out[..max];
    match cut.rfind('-') {
        Some(i) if i > 0 && out.as_bytes()[max] != b'-' => cut[..i].to_string(),
        _ => cut.trim_end_matches('-').to_string(),
    }
}

/// The base letter of the common accented Latin letters; anything else unchanged.
fn fold_accent(c: char) -> char {
    match c {
        'à'..='å' => 'a',
        'À'..='Å' => 'a',
        'ç' | 'Ç' => 'c',
        'è'..='ë' | 'È'..='Ë' => 'e',
        'ì'..='ï' | 'Ì'..='Ï' => 'i',
        'ñ' | 'Ñ' => 'n',
        'ò'..='ö' | 'Ò'..='Ö' | 'ø' | 'Ø' => 'o',
        'ù'..='ü' | 'Ù'..='Ü' => 'u',
        'ý' | 'ÿ' | 'Ý' => 'y',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(1, "photo"), "1 photo");
        assert_eq!(count(0, "photo"), "0 photos");
        assert_eq!(count(5, "rater"), "5 raters");
        assert_eq!(count_as(1, "subject", "subjects"), "1 subject");
        assert_eq!(
            format!("1 of 5 photos {} a caption", verb(1, "has", "have")),
            "1 of 5 photos has a caption"
        );
        assert_eq!(verb(2, "has", "have"), "have");
    }

    #[test]
    fn slugs_are_safe_readable_and_bounded() {
        assert_eq!(
            slug("a photo of a [V] robot on the beach", SLUG_MAX),
            "a-photo-of-a-v-robot-on-the-beach"
        );
        assert_eq!(
            slug("  Crème brûlée, à la carte!  ", 60),
            "creme-brulee-a-la-carte"
        );
        assert_eq!(slug("../../etc/passwd", 60), "etc-passwd");
        assert_eq!(
            slug("<img src=x onerror=alert(1)>", 60),
            "img-src-x-onerror-alert-1"
        );
        assert_eq!(slug("日本語", 60), "");
        // Cut at a word boundary, never past the limit, never ending in a dash.
        let long = "a sks dog wearing a very long and elaborate costume in the rain at night";
        let s = slug(long, 30);
        assert!(s.len() <= 30, "{s}");
        assert_eq!(s, "a-sks-dog-wearing-a-very-long");
        assert_eq!(slug("abcdefghijklmnop", 5), "abcde");
        assert_eq!(slug("abcd efgh", 4), "abcd");
    }
}
