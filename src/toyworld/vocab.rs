//! The toy model's tokenizer: the real CLIP BPE restricted to the words the world and the
//! DreamBooth prompt lists use.
//!
//! The full vocabulary has 49,408 tokens; a text encoder's token embedding over it would be
//! most of the toy model's size. Keeping every byte token (so any text still tokenizes), the
//! merges that the corpus's words actually apply (in their original order) and the tokens
//! those merges make gives the same segmentation as full CLIP for every corpus word: BPE
//! applies, at each step, the lowest-ranked merge present, and for a corpus word that merge
//! is by construction among those kept. Other words fall back to shorter pieces.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::sdxl::model_folder::{CLIP_MERGES, CLIP_VOCAB};

pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

/// A reduced vocabulary: `vocab.json` and `merges.txt` texts, and the number of tokens.
pub struct Vocab {
    pub vocab_json: String,
    pub merges_txt: String,
    pub size: usize,
}

/// CLIP's pre-tokenizer for lower-case ASCII text: runs of letters, single digits, runs of
/// other non-space characters.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_class = 0u8;
    for ch in text.to_lowercase().chars() {
        let class = if ch.is_whitespace() {
            0
        } else if ch.is_alphabetic() {
            1
        } else if ch.is_numeric() {
            2
        } else {
            3
        };
        if class != cur_class || class == 2 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur_class = class;
        }
        if class != 0 {
            cur.push(ch);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The merges that BPE applies to `word` under `ranks`, in the order applied.
fn bpe_merges(word: &str, ranks: &HashMap<(String, String), usize>) -> Vec<(String, String)> {
    let mut symbols: Vec<String> = word.chars().map(|c| c.to_string()).collect();
    if let Some(last) = symbols.last_mut() {
        last.push_str("</w>");
    }
    let mut used = Vec::new();
    loop {
        let best = symbols
            .windows(2)
            .filter_map(|p| ranks.get(&(p[0].clone(), p[1].clone())).map(|&r| (r, p)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, p)| (p[0].clone(), p[1].clone()));
        let Some((a, b)) = best else { break };
        let mut merged = Vec::with_capacity(symbols.len());
        let mut i = 0;
        while i < symbols.len() {
            if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                merged.push(format!("{a}{b}"));
                i += 2;
            } else {
                merged.push(symbols[i].clone());
                i += 1;
            }
        }
        symbols = merged;
        used.push((a, b));
    }
    used
}

/// The reduced vocabulary for `corpus` (any texts; only ASCII words are expected).
pub fn reduced(corpus: &[String]) -> Result<Vocab> {
    let full: serde_json::Map<String, Value> = serde_json::from_str(CLIP_VOCAB)
        .map_err(|e| Error::msg(format!("bundled CLIP vocab: {e}")))?;
    let merges: Vec<(String, String)> = CLIP_MERGES
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let ranks: HashMap<(String, String), usize> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| (m.clone(), i))
        .collect();
    let mut kept: BTreeSet<usize> = BTreeSet::new();
    let unique: BTreeSet<String> = corpus.iter().flat_map(|t| words(t)).collect();
    for w in &unique {
        for m in bpe_merges(w, &ranks) {
            kept.insert(ranks[&m]);
        }
    }
    // Token order as in CLIP: the 256 byte symbols, the same with `</w>`, then one token per
    // merge in merge order, then the two special tokens (EOS last, so the legacy
    // `argmax(input_ids)` finds it, as in CLIP).
    let mut ordered: Vec<(&String, i64)> = full
        .iter()
        .filter_map(|(k, v)| v.as_i64().map(|i| (k, i)))
        .filter(|&(_, i)| i < 512)
        .collect();
    ordered.sort_by_key(|&(_, i)| i);
    let mut tokens: Vec<String> = ordered.into_iter().map(|(k, _)| k.clone()).collect();
    let mut merges_txt = String::from("#version: 0.2\n");
    for &r in &kept {
        let (a, b) = &merges[r];
        tokens.push(format!("{a}{b}"));
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    tokens.push(BOS.to_string());
    tokens.push(EOS.to_string());
    let map: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), Value::from(i as i64)))
        .collect();
    if map.len() != tokens.len() {
        return Err(Error::msg("reduced CLIP vocabulary has a repeated token"));
    }
    Ok(Vocab {
        vocab_json: serde_json::to_string(&map).expect("json values serialise"),
        merges_txt,
        size: tokens.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_clip() {
        assert_eq!(
            words("a [V] robot, 2 cats"),
            ["a", "[", "v", "]", "robot", ",", "2", "cats"]
        );
    }
}
