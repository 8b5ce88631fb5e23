//! The CLIP tokenizers against transformers' `CLIPTokenizer` (tests/reference/ref_tokenizer.py):
//! identical ids for every reference prompt, in all tokenizer folders and both layouts.

mod common;

use common::scratch;
use moslora::sdxl::tokenizer::ClipTokenizer;
use serde_json::Value;

struct Reference {
    prompts: Vec<String>,
    tokenizers: serde_json::Map<String, Value>,
}

fn reference() -> Reference {
    let path = common::fixtures().join("ref").join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reference {} missing ({e}): run `make fixtures`",
            path.display()
        )
    });
    let mut v: Value = serde_json::from_str(&text).expect("reference JSON");
    let prompts = serde_json::from_value(v["prompts"].take()).expect("prompts");
    let Value::Object(tokenizers) = v["tokenizers"].take() else {
        panic!("tokenizers")
    };
    Reference {
        prompts,
        tokenizers,
    }
}

fn ids(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).expect("list of id lists")
}

#[test]
fn ids_match_transformers_in_every_folder() {
    let r = reference();
    assert!(
        r.prompts.len() >= 60,
        "only {} reference prompts",
        r.prompts.len()
    );
    assert_eq!(
        r.tokenizers.len(),
        4,
        "expected four tokenizer folders in the reference"
    );
    let mut failures = Vec::new();
    for (folder, expected) in &r.tokenizers {
        let tok = ClipTokenizer::from_dir(&common::fixtures().join(folder))
            .unwrap_or_else(|e| panic!("{folder}: {e}"));
        assert_eq!(
            tok.max_len() as u64,
            expected["model_max_length"].as_u64().unwrap(),
            "{folder}"
        );
        assert_eq!(
            tok.pad_id(),
            expected["pad_id"].as_i64().unwrap(),
            "{folder}: pad id"
        );
        assert_eq!(
            tok.bos_id(),
            expected["bos_id"].as_i64().unwrap(),
            "{folder}: bos id"
        );
        assert_eq!(
            tok.eos_id(),
            expected["eos_id"].as_i64().unwrap(),
            "{folder}: eos id"
        );
        let padded = ids(&expected["ids"]);
        let unpadded = ids(&expected["unpadded"]);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let got = tok.encode(prompt).unwrap();
            assert_eq!(got.len(), tok.max_len(), "{folder}: {prompt:?}");
            if got != padded[i] {
                failures.push(format!(
                    "{folder} (padded) {prompt:?}:\n  got      {got:?}\n  expected {:?}",
                    padded[i]
                ));
            }
            let got = tok.encode_unpadded(prompt).unwrap();
            if got != unpadded[i] {
                failures.push(format!(
                    "{folder} (unpadded) {prompt:?}:\n  got      {got:?}\n  expected {:?}",
                    unpadded[i]
                ));
            }
        }
        println!("{folder}: {} prompts checked", r.prompts.len());
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sdxl_pad_ids_and_length() {
    let fx = common::tiny_model();
    let one = ClipTokenizer::from_dir(&fx.join("tokenizer")).unwrap();
    let two = ClipTokenizer::from_dir(&fx.join("tokenizer_2")).unwrap();
    assert_eq!((one.pad_id(), two.pad_id()), (49407, 0));
    for tok in [&one, &two] {
        assert_eq!(tok.max_len(), 77);
        assert_eq!((tok.bos_id(), tok.eos_id()), (49406, 49407));
        assert_eq!(tok.vocab_size(), 49408);
        let ids = tok.encode("a photo of sks dog").unwrap();
        assert_eq!(ids.len(), 77);
        assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 48136, 1929, 49407]);
        assert!(ids[7..].iter().all(|&i| i == tok.pad_id()));
        // Truncation keeps EOS in the last place.
        let long = tok.encode(&"dog ".repeat(200)).unwrap();
        assert_eq!(long.len(), 77);
        assert_eq!((long[0], long[76]), (49406, 49407));
        assert_eq!(tok.encode_unpadded(&"dog ".repeat(200)).unwrap().len(), 202);
        assert_eq!(tok.encode("").unwrap()[..2], [49406, 49407]);
    }
    // tokenizer_2's pad token `!` is an added token: it is matched in the prompt too.
    assert_eq!(
        one.encode_unpadded("hi!").unwrap(),
        vec![49406, 1883, 256, 49407]
    );
    assert_eq!(
        two.encode_unpadded("hi!").unwrap(),
        vec![49406, 1883, 0, 49407]
    );
    assert_eq!(
        one.decode(&one.encode("A Photo of SKS dog").unwrap())
            .unwrap(),
        "a photo of sks dog"
    );
}

#[test]
fn errors_name_the_file() {
    let src = common::tiny_model().join("tokenizer");

    let empty = scratch("empty");
    let err = ClipTokenizer::from_dir(&empty)
        .expect_err("empty folder")
        .to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");

    let no_vocab = scratch("no-vocab");
    std::fs::copy(
        src.join("tokenizer_config.json"),
        no_vocab.join("tokenizer_config.json"),
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(&no_vocab)
        .expect_err("no vocabulary")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab.json"),
        "{err}"
    );
    std::fs::copy(src.join("merges.txt"), no_vocab.join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_dir(&no_vocab)
        .expect_err("no vocab.json")
        .to_string();
    assert!(
        err.contains("vocab.json") && err.contains("missing"),
        "{err}"
    );

    let bad = scratch("bad-merges");
    for f in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
    ] {
        std::fs::copy(src.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(
        bad.join("merges.txt"),
        "#version: 0.2\ni n\nthree parts here\n",
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(&bad)
        .expect_err("bad merges")
        .to_string();
    assert!(
        err.contains("merges.txt") && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(bad.join("merges.txt"), "#version: 0.2\ni n\n").unwrap();
    std::fs::write(bad.join("vocab.json"), "{\"a\": ").unwrap();
    let err = ClipTokenizer::from_dir(&bad)
        .expect_err("bad vocab")
        .to_string();
    assert!(
        err.contains("vocab.json") && err.contains("invalid JSON"),
        "{err}"
    );

    for d in [empty, no_vocab, bad] {
        let _ = std::fs::remove_dir_all(d);
    }
}
