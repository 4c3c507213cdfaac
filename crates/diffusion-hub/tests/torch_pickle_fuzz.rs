//! Property tests of the `torch.save` reader (`TorchFile`): a corrupted pickle,
//! a corrupted or truncated archive, never panics; it is an error naming the
//! file, or, when accepted, every tensor it reports is readable and its bytes
//! match its shape and dtype. The mutations start from the committed fixtures
//! (written by torch itself), so they reach deep into the pickle machine.
//! Each input is opened both strictly and with
//! `PickleOptions::skip_unsafe_globals`: the opt-in may only turn a refused
//! global (a mutated name, most often) into a skipped one, never change what
//! a strictly accepted file holds.
//! Inputs that ever fail here belong in an explicit test of tests/weights.rs.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use diffusion_hub::torch_pickle::{PickleOptions, TorchFile};
use diffusion_hub::weights::WeightsError;
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/single_file");
    std::fs::read(path.join(name)).unwrap()
}

/// Where the `data.pkl` entry's bytes lie in an archive.
fn pickle_range(bytes: &[u8]) -> (usize, usize) {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).unwrap();
        if entry.name().ends_with("/data.pkl") {
            let start = entry.data_start().unwrap() as usize;
            return (start, start + entry.size() as usize);
        }
    }
    panic!("fixture without data.pkl");
}

/// An accepted file's tensors are readable, their bytes matching shape and dtype.
fn check_accepted(file: &TorchFile) {
    for (name, info) in file.tensors() {
        let view = file.tensor(name).unwrap();
        if let Some(size) = info.dtype.size() {
            assert_eq!(
                view.data.len(),
                info.shape.iter().product::<usize>() * size,
                "{name}"
            );
        }
    }
}

/// Opens `bytes` as a file, strictly and skipping unsafe globals, and checks
/// both outcomes and how they relate.
fn check(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("fuzz.ckpt");
    std::fs::write(&path, bytes).unwrap();
    let strict = TorchFile::open(&path);
    let skipping = TorchFile::open_with(&path, &PickleOptions::default().skip_unsafe_globals(true));
    for outcome in [&strict, &skipping] {
        match outcome {
            Ok(file) => check_accepted(file),
            Err(e) => assert!(e.to_string().contains("fuzz.ckpt"), "{e}"),
        }
    }
    match (&strict, &skipping) {
        (Ok(a), Ok(b)) => {
            assert!(b.skipped_globals().is_empty(), "{:?}", b.skipped_globals());
            let tensors = |f: &TorchFile| -> Vec<(String, Vec<u8>)> {
                f.tensors()
                    .map(|(n, _)| (n.to_string(), f.tensor(n).unwrap().data.to_vec()))
                    .collect()
            };
            assert_eq!(tensors(a), tensors(b));
            assert_eq!(a.other_keys(), b.other_keys());
        }
        (Ok(_), Err(e)) => panic!("accepted strictly, refused with the opt-in: {e}"),
        (_, Err(e @ WeightsError::UnsafeGlobal { .. })) => {
            panic!("refused a global despite the opt-in: {e}")
        }
        (Err(WeightsError::UnsafeGlobal { global, .. }), Ok(b)) => {
            assert!(
                b.skipped_globals().contains(global),
                "{global} refused, {:?} skipped",
                b.skipped_globals()
            );
        }
        (Err(e), Ok(_)) => panic!("only the opt-in accepts this, yet strictly: {e}"),
        (Err(_), Err(_)) => {}
    }
}

/// A fixture with `edits` (position within the pickle, new byte) applied.
fn mutate_pickle(name: &str, edits: &[(usize, u8)]) -> Vec<u8> {
    let mut bytes = fixture(name);
    let (a, b) = pickle_range(&bytes);
    for &(pos, v) in edits {
        bytes[a + pos % (b - a)] = v;
    }
    bytes
}

fn fixture_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("misc.pt"), Just("sd1.ckpt")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn flipped_pickle_bytes_never_panic(
        name in fixture_name(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        check(&mutate_pickle(name, &edits));
    }

    #[test]
    fn random_pickle_never_panics(
        name in fixture_name(),
        fill in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        // The pickle's head replaced by random opcodes and operands.
        let edits: Vec<(usize, u8)> = fill.iter().enumerate().map(|(i, &v)| (i, v)).collect();
        check(&mutate_pickle(name, &edits));
    }

    #[test]
    fn truncated_or_corrupt_archives_never_panic(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = fixture("misc.pt");
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let keep = cut.index(bytes.len());
        check(&bytes[..keep]);
    }
}

#[test]
fn the_fixtures_themselves_are_accepted() {
    for name in ["misc.pt", "sd1.ckpt"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, fixture(name)).unwrap();
        let file = TorchFile::open(&path).unwrap();
        assert!(!file.is_empty(), "{name}");
    }
}

/// The relation `check` holds between the two modes, on a mutation known to
/// reach it: `collections` misspelt in `misc.pt` names a global torch does
/// not allow, refused strictly and skipped with the opt-in (the tensors do
/// not need the `OrderedDict` of backward hooks it would have built).
#[test]
fn a_misspelt_global_is_refused_strictly_and_skipped_with_the_opt_in() {
    let mut bytes = fixture("misc.pt");
    let (a, b) = pickle_range(&bytes);
    let at = bytes[a..b]
        .windows(b"collections".len())
        .position(|w| w == b"collections")
        .unwrap();
    bytes[a + at + "collection".len()] = b'x';
    check(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("misspelt.pt");
    std::fs::write(&path, &bytes).unwrap();
    let err = TorchFile::open(&path).unwrap_err();
    assert!(
        matches!(&err, WeightsError::UnsafeGlobal { global, .. } if global == "collectionx.OrderedDict"),
        "{err}"
    );
    let file =
        TorchFile::open_with(&path, &PickleOptions::default().skip_unsafe_globals(true)).unwrap();
    assert_eq!(file.skipped_globals(), ["collectionx.OrderedDict"]);
    let reference = TorchFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/single_file/misc.pt"),
    )
    .unwrap();
    assert_eq!(file.len(), reference.len());
}
