//! Property tests of the `torch.save` reader (`TorchFile`): a corrupted pickle,
//! a corrupted or truncated archive, never panics; it is an error naming the
//! file, or, when accepted, every tensor it reports is readable and its bytes
//! match its shape and dtype. The mutations start from the committed fixtures
//! (written by torch itself), so they reach deep into the pickle machine.
//! Inputs that ever fail here belong in an explicit test of tests/weights.rs.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use diffusion_hub::torch_pickle::TorchFile;
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

/// Opens `bytes` as a file and checks the outcome.
fn check(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("fuzz.ckpt");
    std::fs::write(&path, bytes).unwrap();
    match TorchFile::open(&path) {
        Ok(file) => {
            let names: Vec<String> = file.tensors().map(|(n, _)| n.to_string()).collect();
            for name in names {
                let view = file.tensor(&name).unwrap();
                let info = file.tensors().find(|(n, _)| *n == name).unwrap().1;
                if let Some(size) = info.dtype.size() {
                    assert_eq!(
                        view.data.len(),
                        info.shape.iter().product::<usize>() * size,
                        "{name}"
                    );
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("fuzz.ckpt"), "{e}"),
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
