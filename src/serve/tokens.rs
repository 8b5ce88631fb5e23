//! Access tokens: one secret per rater and one for the organiser.
//!
//! A token is 32 bytes from the operating system's generator (256 bits), written as 64 hex
//! digits; it travels in the link's fragment (`/#TOKEN`), which browsers never send to a server
//! or put in a `Referer`, and reaches the API only in an `Authorization: Bearer` header, so it
//! stays out of access logs. The database keeps only SHA-256 digests: a copy of the votes
//! database handed on for analysis opens nothing. Every check compares the digest of the
//! presented token with every stored digest in constant time.

use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::{Error, Result};

/// Bytes of randomness in a token.
pub const TOKEN_BYTES: usize = 32;
/// A presented token longer than this is refused before hashing (tokens are 64 characters).
const MAX_PRESENTED: usize = 256;

/// A fresh token.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.try_fill_bytes(&mut bytes).map_err(|e| {
        Error::msg(format!(
            "the operating system's random generator failed: {e}"
        ))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The digest the database keeps.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The stored digests and whom each admits.
#[derive(Debug, Default, Clone)]
pub struct TokenTable {
    entries: Vec<([u8; 32], i64)>,
}

impl TokenTable {
    pub fn new(entries: Vec<([u8; 32], i64)>) -> TokenTable {
        TokenTable { entries }
    }

    pub fn insert(&mut self, digest: [u8; 32], id: i64) {
        self.entries.push((digest, id));
    }

    /// Whom `presented` admits. Every entry is compared, and the comparison and the choice of
    /// the match are constant-time, so the time taken says nothing about how close a guess
    /// came or which entry it hit.
    pub fn find(&self, presented: &str) -> Option<i64> {
        if presented.is_empty() || presented.len() > MAX_PRESENTED {
            return None;
        }
        let d = digest(presented);
        let mut found = subtle::Choice::from(0u8);
        let mut id = 0u64;
        for (stored, who) in &self.entries {
            let hit = stored.ct_eq(&d);
            id = u64::conditional_select(&id, &(*who as u64), hit);
            found |= hit;
        }
        bool::from(found).then_some(id as i64)
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_hex_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn only_the_exact_token_is_admitted() {
        let t = new_token().unwrap();
        let other = new_token().unwrap();
        let table = TokenTable::new(vec![(digest(&other), 1), (digest(&t), 7)]);
        assert_eq!(table.find(&t), Some(7));
        assert_eq!(table.find(&other), Some(1));
        let mut first = t.clone();
        first.replace_range(0..1, if t.starts_with('0') { "1" } else { "0" });
        let mut last = t.clone();
        last.pop();
        last.push(if t.ends_with('0') { '1' } else { '0' });
        let upper = t.to_uppercase();
        for bad in [
            "",
            &t[..63],
            &format!("{t}0"),
            &first,
            &last,
            &upper,
            &"x".repeat(10_000),
        ] {
            if bad != t {
                assert_eq!(table.find(bad), None, "{bad:?}");
            }
        }
        assert_eq!(TokenTable::default().find(&t), None);
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
