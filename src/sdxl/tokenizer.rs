//! SDXL's CLIP tokenizers (`tokenizer/`, `tokenizer_2/`), after transformers' `CLIPTokenizer`.
//!
//! Both folders hold the same byte-level BPE (49,408 tokens, `</w>` end-of-word suffix); they
//! differ in the pad token: `<|endoftext|>` (49407) in `tokenizer/`, `!` (id 0) in
//! `tokenizer_2/`. Two layouts are read:
//! * a real download: `vocab.json` + `merges.txt` + `special_tokens_map.json` +
//!   `tokenizer_config.json`;
//! * transformers 5's `save_pretrained`: `tokenizer.json` + `tokenizer_config.json`.
//!
//! Like transformers, the BPE pipeline is always built the CLIP way (NFC, whitespace collapse,
//! lower-casing; CLIP's split regex, then byte-level), whatever a `tokenizer.json` says: only
//! its vocabulary, merges and added tokens are taken from it.
//!
//! The special tokens are "added tokens": they are matched in the raw text before BPE. That
//! includes the pad token, so in `tokenizer_2/` every `!` in a prompt becomes id 0 rather than
//! BPE's `!</w>` (256): transformers does this too, and the ids must match it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// transformers' CLIP pre-tokenizer regex (from OpenAI's `simple_tokenizer.py`), applied to the
/// normalized text.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const END_OF_WORD: &str = "</w>";

/// The named special tokens, in the order transformers adds them (a later one with the same
/// text overrides the flags of an earlier one).
const SPECIAL_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// `CLIPTokenizer`'s defaults for tokens a config leaves out.
fn clip_default(key: &str) -> Option<&'static str> {
    match key {
        "bos_token" => Some("<|startoftext|>"),
        "eos_token" | "unk_token" | "pad_token" => Some("<|endoftext|>"),
        _ => None,
    }
}

/// A CLIP BPE tokenizer that encodes prompts the way SDXL's pipeline does.
#[derive(Debug)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    max_len: usize,
    dir: PathBuf,
}

impl ClipTokenizer {
    /// Read a tokenizer folder in either layout (see the module documentation).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_object(&config_path)?;
        let json_path = dir.join("tokenizer.json");
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");

        // transformers prefers tokenizer.json when both layouts are present.
        let (vocab, merges, file_tokens) = if json_path.is_file() {
            read_tokenizer_json(&json_path)?
        } else if vocab_path.is_file() || merges_path.is_file() {
            (
                read_vocab(&vocab_path)?,
                read_merges(&merges_path)?,
                Vec::new(),
            )
        } else {
            return Err(Error::BadFile {
                path: dir.to_path_buf(),
                what: "not a tokenizer folder: neither tokenizer.json nor vocab.json + merges.txt \
                       found"
                    .into(),
            });
        };

        let special = SpecialTokens::resolve(dir, &config_path, &config, file_tokens)?;
        let unk = special
            .content("unk_token")
            .unwrap_or("<|endoftext|>")
            .to_string();

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(END_OF_WORD.into())
            .fuse_unk(false)
            .build()
            .map_err(|e| Error::BadFile {
                path: if json_path.is_file() {
                    json_path.clone()
                } else {
                    merges_path.clone()
                },
                what: format!("invalid BPE vocabulary or merges: {e}"),
            })?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_normalizer(Some(clip_normalizer()?));
        tokenizer.with_pre_tokenizer(Some(clip_pre_tokenizer()?));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer.add_tokens(&special.added);

        let id_of = |key: &str| -> Result<i64> {
            let content = special.content(key).ok_or_else(|| {
                Error::config(
                    &config_path,
                    format!("no `{key}` and no CLIP default for it"),
                )
            })?;
            tokenizer
                .token_to_id(content)
                .map(i64::from)
                .ok_or_else(|| {
                    Error::config(
                        &config_path,
                        format!("`{key}` {content:?} is not in the vocabulary"),
                    )
                })
        };
        let bos_id = id_of("bos_token")?;
        let eos_id = id_of("eos_token")?;
        let pad_id = id_of("pad_token")?;

        let max_len = match config.get("model_max_length").and_then(Value::as_u64) {
            Some(n) if (2..=1_000_000).contains(&n) => n as usize,
            _ => {
                return Err(Error::config(
                    &config_path,
                    format!(
                        "`model_max_length` must be a token count (77 for SDXL), found {}",
                        config
                            .get("model_max_length")
                            .map_or("nothing".into(), |v| v.to_string())
                    ),
                ))
            }
        };

        Ok(ClipTokenizer {
            tokenizer,
            bos_id,
            eos_id,
            pad_id,
            max_len,
            dir: dir.to_path_buf(),
        })
    }

    /// Exactly `max_len()` ids, as SDXL's pipeline asks for them (`padding="max_length",
    /// max_length=model_max_length, truncation=True`): BOS, the prompt's tokens cut to fit,
    /// EOS (kept when the prompt is cut), then the pad id.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let tokens = self.tokens(text)?;
        let keep = tokens.len().min(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..keep]);
        ids.push(self.eos_id);
        ids.resize(self.max_len, self.pad_id);
        Ok(ids)
    }

    /// BOS, every token of the prompt, EOS: no truncation and no padding. Longer than
    /// `max_len()` means the prompt will be cut.
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<i64>> {
        let tokens = self.tokens(text)?;
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(self.bos_id);
        ids.extend(tokens);
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// The part of `text` that `encode` cuts off to fit `max_len()` tokens, as text (what
    /// diffusers names in its truncation warning); None when the prompt fits.
    pub fn truncated_part(&self, text: &str) -> Result<Option<String>> {
        let tokens = self.tokens(text)?;
        let keep = self.max_len - 2;
        if tokens.len() <= keep {
            return Ok(None);
        }
        self.decode(&tokens[keep..]).map(Some)
    }

    /// The text of `ids` (special tokens dropped), as `CLIPTokenizer.decode` gives it: for
    /// reporting the part of a prompt that truncation removed.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| Error::msg(format!("{}: decoding failed: {e}", self.dir.display())))?;
        Ok(text.replace(END_OF_WORD, " ").trim().to_string())
    }

    /// The prompt's tokens, without BOS/EOS.
    fn tokens(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| {
            Error::msg(format!(
                "{}: cannot tokenize {text:?}: {e}",
                self.dir.display()
            ))
        })?;
        Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }

    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    /// `model_max_length`: 77 for SDXL.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// NFC, runs of whitespace to one space, lower case (transformers' CLIP normalizer).
fn clip_normalizer() -> Result<NormalizerSequence> {
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| Error::msg(format!("CLIP normalizer: {e}")))?;
    Ok(NormalizerSequence::new(vec![
        NFC.into(),
        whitespace.into(),
        Lowercase.into(),
    ]))
}

/// CLIP's split regex (keeping the matches), then byte-level mapping without a prefix space.
fn clip_pre_tokenizer() -> Result<PreTokenizerSequence> {
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| Error::msg(format!("CLIP pre-tokenizer: {e}")))?;
    Ok(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ]))
}

/// A special-token value as transformers stores it: a string, or an `AddedToken` object.
fn parse_token(value: &Value, special_default: bool) -> Option<AddedToken> {
    match value {
        Value::String(s) => {
            // transformers turns a plain string into `AddedToken(s, special=True)`, which
            // matches the raw (not normalized) text.
            Some(AddedToken::from(s.clone(), true).normalized(false))
        }
        Value::Object(m) => {
            let content = m.get("content")?.as_str()?.to_string();
            let flag = |k: &str, d: bool| m.get(k).and_then(Value::as_bool).unwrap_or(d);
            let special = flag("special", special_default);
            let mut t = AddedToken::from(content, special);
            t.normalized = flag("normalized", !special);
            t.lstrip = flag("lstrip", false);
            t.rstrip = flag("rstrip", false);
            t.single_word = flag("single_word", false);
            Some(t)
        }
        _ => None,
    }
}

/// The special tokens of one folder and the added tokens to register, resolved as
/// transformers 5's `from_pretrained` does.
#[derive(Debug)]
struct SpecialTokens {
    /// Named special token -> its token.
    named: HashMap<&'static str, AddedToken>,
    /// Tokens to add to the tokenizer, one per text, with the flags that win.
    added: Vec<AddedToken>,
}

impl SpecialTokens {
    fn resolve(
        dir: &Path,
        config_path: &Path,
        config: &Map<String, Value>,
        file_tokens: Vec<(u32, AddedToken)>,
    ) -> Result<Self> {
        let mut values: HashMap<&'static str, AddedToken> = HashMap::new();
        for key in SPECIAL_KEYS {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                let t = parse_token(v, false).ok_or_else(|| {
                    Error::config(
                        config_path,
                        format!("`{key}` must be a string or a token object"),
                    )
                })?;
                values.insert(key, t);
            }
        }
        let mut extra: Vec<AddedToken> = Vec::new();
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(Value::Array(list)) = config.get(key) {
                extra.extend(list.iter().filter_map(|v| parse_token(v, true)));
            }
        }

        // Tokens registered by id: `added_tokens_decoder` in a recent tokenizer_config.json;
        // otherwise the legacy files: special_tokens_map.json overrides the config's special
        // tokens, and tokenizer.json's `added_tokens` are taken as they are.
        let mut decoder: Vec<(u32, AddedToken)> = Vec::new();
        if let Some(Value::Object(map)) = config.get("added_tokens_decoder") {
            for (id, v) in map {
                let id: u32 = id.parse().map_err(|_| {
                    Error::config(
                        config_path,
                        format!("`added_tokens_decoder` key {id:?} is not an id"),
                    )
                })?;
                let t = parse_token(v, false).ok_or_else(|| {
                    Error::config(
                        config_path,
                        format!("`added_tokens_decoder` entry {id} is malformed"),
                    )
                })?;
                decoder.push((id, t));
            }
        } else {
            let map_path = dir.join("special_tokens_map.json");
            if map_path.is_file() {
                let map = read_json_object(&map_path)?;
                for key in SPECIAL_KEYS {
                    if let Some(v) = map.get(key).filter(|v| !v.is_null()) {
                        let t = parse_token(v, true).ok_or_else(|| Error::BadFile {
                            path: map_path.clone(),
                            what: format!("`{key}` must be a string or a token object"),
                        })?;
                        values.insert(key, t);
                    }
                }
            }
            decoder.extend(file_tokens);
        }
        decoder.sort_by_key(|(id, _)| *id);

        // A named token whose text was registered by id takes that registration's flags.
        let registered: HashMap<String, AddedToken> = decoder
            .iter()
            .map(|(_, t)| (t.content.clone(), t.clone()))
            .collect();
        let mut named = HashMap::new();
        for key in SPECIAL_KEYS {
            let token = match values.remove(key) {
                Some(t) => t,
                None => match clip_default(key) {
                    Some(d) => AddedToken::from(d, true).normalized(false),
                    None => continue,
                },
            };
            let token = registered.get(&token.content).cloned().unwrap_or(token);
            named.insert(key, token);
        }

        // The add order of transformers: registered tokens by id, then named and extra special
        // tokens not registered. For a text given twice the later flags win (tokenizers keeps
        // the last registration), so keep one entry per text, at its first position.
        let mut order: Vec<AddedToken> = decoder.into_iter().map(|(_, t)| t).collect();
        for key in SPECIAL_KEYS {
            if let Some(t) = named.get(key) {
                if !registered.contains_key(&t.content) {
                    let mut t = t.clone();
                    t.special = true;
                    order.push(t);
                }
            }
        }
        order.extend(
            extra
                .into_iter()
                .filter(|t| !registered.contains_key(&t.content)),
        );
        let mut added: Vec<AddedToken> = Vec::new();
        for t in order {
            match added.iter_mut().find(|a| a.content == t.content) {
                Some(a) => *a = t,
                None => added.push(t),
            }
        }
        Ok(SpecialTokens { named, added })
    }

    fn content(&self, key: &str) -> Option<&str> {
        self.named.get(key).map(|t| t.content.as_str())
    }
}

fn read_json(path: &Path) -> Result<Value> {
    if !path.is_file() {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            what: "missing".into(),
        });
    }
    let text = crate::fsutil::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        what: format!("invalid JSON: {e}"),
    })
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    match read_json(path)? {
        Value::Object(m) => Ok(m),
        _ => Err(Error::BadFile {
            path: path.to_path_buf(),
            what: "expected a JSON object".into(),
        }),
    }
}

/// `vocab.json`: token -> id.
fn read_vocab(path: &Path) -> Result<Vocab> {
    vocab_from_json(path, Value::Object(read_json_object(path)?))
}

fn vocab_from_json(path: &Path, value: Value) -> Result<Vocab> {
    let bad = |what: String| Error::BadFile {
        path: path.to_path_buf(),
        what,
    };
    let Value::Object(map) = value else {
        return Err(bad("the vocabulary must be an object of token -> id".into()));
    };
    map.into_iter()
        .map(|(token, id)| {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(format!("token {token:?} has id {id}, expected an integer")))?;
            Ok((token, id))
        })
        .collect()
}

/// `merges.txt`: one "left right" pair per line, ranked by line; `#version` lines skipped (as
/// the tokenizers library reads it).
fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    if !path.is_file() {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            what: "missing".into(),
        });
    }
    let text = crate::fsutil::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("#version"))
        .map(|(n, line)| match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(Error::BadFile {
                path: path.to_path_buf(),
                what: format!(
                    "line {}: expected two tokens separated by a space, found {line:?}",
                    n + 1
                ),
            }),
        })
        .collect()
}

type TokenizerJsonParts = (Vocab, Vec<(String, String)>, Vec<(u32, AddedToken)>);

/// The vocabulary, merges and added tokens of a `tokenizer.json` holding a BPE model.
fn read_tokenizer_json(path: &Path) -> Result<TokenizerJsonParts> {
    let bad = |what: String| Error::BadFile {
        path: path.to_path_buf(),
        what,
    };
    let Value::Object(mut root) = read_json(path)? else {
        return Err(bad("expected a JSON object".into()));
    };
    let Some(Value::Object(mut model)) = root.remove("model") else {
        return Err(bad("no `model` object".into()));
    };
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") | None => {}
        Some(other) => {
            return Err(bad(format!(
                "model type {other:?}, expected a CLIP BPE model"
            )))
        }
    }
    let vocab = vocab_from_json(path, model.remove("vocab").unwrap_or(Value::Null))?;
    let Some(Value::Array(raw)) = model.remove("merges") else {
        return Err(bad("the BPE model has no `merges` list".into()));
    };
    // Older files store a merge as "left right", newer ones as ["left", "right"].
    let merges = raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => match s.split(' ').collect::<Vec<_>>()[..] {
                    [a, b] => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                Value::Array(p) => match &p[..] {
                    [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| bad(format!("merge {i} is malformed: {m}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut added = Vec::new();
    if let Some(Value::Array(list)) = root.get("added_tokens") {
        for (i, v) in list.iter().enumerate() {
            let id = v
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok());
            match (id, parse_token(v, false)) {
                (Some(id), Some(t)) => added.push((id, t)),
                _ => return Err(bad(format!("added token {i} is malformed: {v}"))),
            }
        }
    }
    Ok((vocab, merges, added))
}
