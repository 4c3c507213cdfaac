//! CLIP tokenizer parity with transformers, on the prompts of
//! `tests/fixtures/tokenizer/prompts.json` (written by
//! `scripts/hub/gen_tokenizer_fixtures.py`). The tokenizer folders are rebuilt here
//! from the committed `bpe_simple_vocab_16e6.txt.gz` (open-clip's copy of the CLIP
//! vocabulary), laid out as openai/clip-vit-large-patch14's vocab.json + merges.txt.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use diffusion_hub::tokenizer::{ClipFlavor, ClipTokenizer, clip_vocab_from_bpe};
use serde_json::{Map, Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

/// (vocab in id order, merges) as openai/clip-vit-large-patch14 has them.
fn clip_vocab() -> &'static (Vec<String>, Vec<String>) {
    static V: OnceLock<(Vec<String>, Vec<String>)> = OnceLock::new();
    V.get_or_init(|| {
        let path = fixtures().join("bpe_simple_vocab_16e6.txt.gz");
        let gz = std::fs::read(&path).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        let v = clip_vocab_from_bpe(&text, &path).unwrap();
        assert_eq!(v.0.len(), 49408);
        v
    })
}

fn vocab_map() -> Map<String, Value> {
    let (vocab, _) = clip_vocab();
    vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect()
}

/// A folder with vocab.json + merges.txt and the given config.
fn vocab_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (_, merges) = clip_vocab();
    std::fs::write(
        dir.path().join("vocab.json"),
        Value::Object(vocab_map()).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join(config),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    dir
}

/// A folder with only tokenizer.json (transformers' saved one, vocab filled back in).
fn json_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures().join("tokenizer_template.json")).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    let (_, merges) = clip_vocab();
    doc["model"]["vocab"] = Value::Object(vocab_map());
    doc["model"]["merges"] = json!(merges);
    std::fs::write(dir.path().join("tokenizer.json"), doc.to_string()).unwrap();
    std::fs::copy(
        fixtures().join(config),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    dir
}

struct Case {
    prompt: String,
    v: Value,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("prompts.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["model_max_length"], 77);
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            v: c.clone(),
        })
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

impl Case {
    /// The first of `keys` the case has.
    fn get(&self, keys: &[&str]) -> Vec<u32> {
        keys.iter()
            .find_map(|k| self.v.get(*k).map(ids))
            .unwrap_or_else(|| panic!("{:?}: none of {keys:?}", self.prompt))
    }
}

/// `padding="max_length", max_length=77, truncation=True` from the untruncated ids.
fn padded_rule(full: &[u32], pad: u32) -> Vec<u32> {
    let mut ids = if full.len() <= 77 {
        full.to_vec()
    } else {
        let mut v = full[..76].to_vec();
        v.push(*full.last().unwrap());
        v
    };
    ids.resize(77, pad);
    ids
}

/// Compares one tokenizer with the fixture; returns the number of mismatches.
fn check(
    label: &str,
    tok: &ClipTokenizer,
    cases: &[Case],
    full_keys: &[&str],
    padded_keys: &[&str],
) -> usize {
    let mut bad = 0;
    for c in cases {
        let want_full = c.get(full_keys);
        let want_padded = padded_keys
            .iter()
            .find_map(|k| c.v.get(*k).map(ids))
            .unwrap_or_else(|| padded_rule(&want_full, tok.pad_id()));
        let full = tok.encode_unpadded(&c.prompt).unwrap();
        let padded = tok.encode(&c.prompt).unwrap();
        if full != want_full || padded != want_padded {
            bad += 1;
            if bad > 5 {
                continue;
            }
            eprintln!(
                "{label}: {:?}\n  full   got  {full:?}\n         want {want_full:?}\n  padded got  {padded:?}\n         want {want_padded:?}",
                c.prompt
            );
            continue;
        }
        // Chunks: the untruncated ids in windows of 75, each BOS .. EOS + pad.
        let chunks = tok.encode_chunks(&c.prompt).unwrap();
        let inner = &want_full[1..want_full.len() - 1];
        let expect: Vec<Vec<u32>> = if inner.is_empty() {
            vec![padded_rule(&want_full, tok.pad_id())]
        } else {
            inner
                .chunks(75)
                .map(|w| {
                    let mut v = vec![tok.bos_id()];
                    v.extend_from_slice(w);
                    v.push(tok.eos_id());
                    padded_rule(&v, tok.pad_id())
                })
                .collect()
        };
        assert_eq!(chunks, expect, "{label}: chunks of {:?}", c.prompt);
        if want_full.len() <= 77 {
            assert_eq!(chunks, vec![padded.clone()], "{label}: {:?}", c.prompt);
        }
    }
    eprintln!("{label}: {} prompts, {bad} mismatches", cases.len());
    bad
}

#[test]
fn fixture_is_broad() {
    let cases = cases();
    assert!(cases.len() >= 300, "{} prompts", cases.len());
    let long = cases.iter().filter(|c| c.get(&["full"]).len() > 77).count();
    assert!(long >= 20, "{long} prompts over 77 tokens");
    assert!(cases.iter().any(|c| c.get(&["full"]).len() > 3 * 77));
    assert!(cases.iter().any(|c| c.prompt.is_empty()));
}

#[test]
fn known_ids() {
    let dir = vocab_dir("tokenizer_config_sd1.json");
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let ids = tok.encode("a photo of a cat").unwrap();
    assert_eq!(ids[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert_eq!(ids[7..], [49407; 70]);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    let dir = vocab_dir("tokenizer_config_sd2.json");
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let ids = tok.encode("a photo of a cat").unwrap();
    assert_eq!(ids[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert_eq!(ids[7..], [0; 70]);
}

#[test]
fn parity_sd1_sd2_transformers5() {
    let cases = cases();
    let sd1 = vocab_dir("tokenizer_config_sd1.json");
    let sd2 = vocab_dir("tokenizer_config_sd2.json");
    let t1 = ClipTokenizer::from_dir(sd1.path()).unwrap();
    let t2 = ClipTokenizer::from_dir(sd2.path()).unwrap();
    let bad = check("sd1", &t1, &cases, &["full"], &["sd1"])
        + check("sd2", &t2, &cases, &["full_sd2", "full"], &["sd2"]);
    assert_eq!(bad, 0);
}

#[test]
fn parity_tokenizer_json() {
    let cases = cases();
    let dir = json_dir("tokenizer_config_sd1.json");
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let bad = check("tokenizer.json", &tok, &cases, &["full"], &["json", "sd1"]);
    assert_eq!(bad, 0);
}

#[test]
fn parity_slow_v4() {
    let cases = cases();
    let sd1 = vocab_dir("tokenizer_config_sd1.json");
    let sd2 = vocab_dir("tokenizer_config_sd2.json");
    let t1 = ClipTokenizer::from_dir_with(sd1.path(), ClipFlavor::SlowV4).unwrap();
    let t2 = ClipTokenizer::from_dir_with(sd2.path(), ClipFlavor::SlowV4).unwrap();
    let bad = check("slow sd1", &t1, &cases, &["v4_slow_sd1", "full"], &[])
        + check(
            "slow sd2",
            &t2,
            &cases,
            &["v4_slow_sd2", "full_sd2", "full"],
            &[],
        );
    assert_eq!(bad, 0);
}
