//! Escaping for the pages we write (the gallery, the rater page, the sweep's index): prompt
//! text, file names, subject and rater names come from users, and a prompt such as
//! `<img src=x onerror=alert(1)>` or `</script>` must show as text, never run.

/// Text for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A relative file path as the value of a quoted `src` or `href`: every byte but letters,
/// digits, `-._~/` percent-encoded, so no name can start a `javascript:` URL, end the
/// attribute, or cut the path at `#` or `?`.
pub fn url(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// JSON to embed in a `<script>` element: no `</script>`, `<!--` or line separator inside a
/// string can end the element or the script, whatever the prompts say.
pub fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Text for a Markdown table cell or line: Markdown renderers pass raw HTML through, so a
/// rater named `<img src=x onerror=alert(1)>` is escaped as in a page, and `|` and line breaks
/// cannot split the table.
pub fn md_text(s: &str) -> String {
    esc(s).replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_hostile_survives() {
        assert_eq!(
            esc("<img src=x onerror=\"alert(1)\">'&"),
            "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#39;&amp;"
        );
        assert_eq!(md_text("a|<b>\nc"), "a\\|&lt;b&gt; c");
        assert_eq!(url("javascript:alert(1)"), "javascript%3Aalert%281%29");
        assert_eq!(url("images/p 1#x?.png"), "images/p%201%23x%3F.png");
        assert_eq!(url("caf\u{e9}.png"), "caf%C3%A9.png");
        assert_eq!(
            script_json(r#"{"p":"</script><!--"}"#),
            r#"{"p":"\u003c/script\u003e\u003c!--"}"#
        );
    }
}
