//! `TorchGenerator` and `TorchNoise` against torch's CPU generator and diffusers'
//! `randn_tensor`, from the fixture written by `scripts/schedulers/gen_torch_rng.py`:
//! sequences of draws on one generator (both randn paths, the recomputed tail block,
//! the cached scalar sample), a multi-dimensional draw, and per-item generator lists,
//! for both of torch's float Box-Muller implementations.

use diffusion_schedulers::{
    BoxMuller, CpuTensor, NoiseSource, SchedulerError, SchedulerTensor, TorchGenerator, TorchNoise,
};
use serde_json::Value;

/// Largest tolerated relative difference (torch is matched bit for bit in practice).
const TOL: f64 = 1e-6;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch_rng/torch_rng.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn box_mullers(fx: &Value) -> Vec<(BoxMuller, &Value)> {
    [("avx2", BoxMuller::Avx2), ("scalar", BoxMuller::Scalar)]
        .into_iter()
        .map(|(name, k)| (k, &fx["kernels"][name]))
        .collect()
}

/// Compares draws with the fixture; remembers the worst relative difference and
/// how many values were not bit-identical.
#[derive(Default)]
struct Checker {
    worst: f64,
    compared: usize,
    inexact: usize,
}

impl Checker {
    /// The tolerance cannot tell the two implementations apart (they differ by an ulp); the
    /// bit count can. Exact where torch's own libm (glibc) is the one linked.
    fn assert_bit_identical(&self, what: &str) {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(self.inexact, 0, "{what}: values not bit-identical to torch");
        }
    }

    fn value(&mut self, what: &str, got: f64, want: f64) {
        // The fixture stores float32 values; serde_json may parse them a double ulp off.
        let want = want as f32 as f64;
        let diff = (got - want).abs();
        let rel = if diff == 0.0 { 0.0 } else { diff / want.abs() };
        self.worst = self.worst.max(rel);
        self.compared += 1;
        if got != want {
            self.inexact += 1;
        }
        assert!(rel <= TOL, "{what}: got {got}, torch {want} (rel {rel:e})");
    }

    /// One recorded draw: whole values, or head/tail/strided values and the sum.
    fn draw(&mut self, what: &str, got: &[f32], want: &Value) {
        assert_eq!(got.len() as u64, want["n"].as_u64().unwrap(), "{what}: n");
        let mut pairs: Vec<(usize, f64)> = Vec::new();
        if let Some(values) = want.get("values") {
            pairs.extend(floats(values).into_iter().enumerate());
        } else {
            let n = got.len();
            pairs.extend(floats(&want["head"]).into_iter().enumerate());
            pairs.extend(
                floats(&want["tail"])
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (n - 16 + i, v)),
            );
            let stride = want["stride"].as_u64().unwrap() as usize;
            pairs.extend(
                floats(&want["strided"])
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i * stride, v)),
            );
            let sum = got.iter().fold(0.0f64, |acc, &v| acc + v as f64);
            let want_sum = want["sum"].as_f64().unwrap();
            assert!(
                (sum - want_sum).abs() <= TOL * want_sum.abs().max(1.0),
                "{what}: sum {sum} vs torch {want_sum}"
            );
        }
        for (i, want) in pairs {
            self.value(&format!("{what}[{i}]"), got[i] as f64, want);
        }
    }
}

#[test]
fn randn_sequences_match_torch() {
    let fx = fixture();
    for (box_muller, cases) in box_mullers(&fx) {
        let mut check = Checker::default();
        for seq in cases["sequences"].as_array().unwrap() {
            let seed = seq["seed"].as_u64().unwrap();
            let mut g = TorchGenerator::with_box_muller(seed, box_muller);
            for (k, draw) in seq["draws"].as_array().unwrap().iter().enumerate() {
                let n = draw["n"].as_u64().unwrap() as usize;
                let got = g.randn(n);
                check.draw(&format!("{box_muller:?} seed {seed} draw {k}"), &got, draw);
            }
        }
        eprintln!(
            "{box_muller:?}: {} values, {} not bit-identical, worst relative difference {:e}",
            check.compared, check.inexact, check.worst
        );
        check.assert_bit_identical(&format!("{box_muller:?}"));
    }
}

#[test]
fn seeds_use_their_low_32_bits_as_torch_does() {
    let a = TorchGenerator::new(5).randn(40);
    assert_eq!(TorchGenerator::new((1 << 32) + 5).randn(40), a);
    assert_ne!(TorchGenerator::new(6).randn(40), a);
}

#[test]
fn a_shape_draws_the_same_stream_as_its_element_count() {
    let fx = fixture();
    for (box_muller, cases) in box_mullers(&fx) {
        let case = &cases["multi_dim"];
        let shape: Vec<usize> = floats(&case["shape"]).iter().map(|&d| d as usize).collect();
        let g = TorchGenerator::with_box_muller(case["seed"].as_u64().unwrap(), box_muller);
        let got = TorchNoise::from_generators(vec![g]).draw(&shape).unwrap();
        let mut check = Checker::default();
        check.draw(&format!("{box_muller:?} multi_dim"), &got, &case["draw"]);
        check.assert_bit_identical(&format!("{box_muller:?} multi_dim"));
    }
}

#[test]
fn randn_tensor_with_one_or_a_list_of_generators() {
    let fx = fixture();
    for (box_muller, cases) in box_mullers(&fx) {
        let mut check = Checker::default();
        for case in cases["randn_tensor"].as_array().unwrap() {
            let seeds: Vec<u64> = case["seeds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
                .collect();
            let shape: Vec<usize> = floats(&case["shape"]).iter().map(|&d| d as usize).collect();
            let gens = seeds
                .iter()
                .map(|&s| TorchGenerator::with_box_muller(s, box_muller))
                .collect();
            let mut noise = TorchNoise::from_generators(gens);
            for (k, want) in case["draws"].as_array().unwrap().iter().enumerate() {
                // Through the NoiseSource impl, as a stochastic scheduler asks for noise.
                let got = noise.noise(&CpuTensor::zeros(shape.clone())).unwrap();
                assert_eq!(got.shape(), shape);
                check.draw(
                    &format!("{box_muller:?} randn_tensor {seeds:?} draw {k}"),
                    got.data(),
                    want,
                );
            }
        }
        eprintln!(
            "{box_muller:?} randn_tensor: {} values, {} not bit-identical, worst relative difference {:e}",
            check.compared, check.inexact, check.worst
        );
        check.assert_bit_identical(&format!("{box_muller:?}"));
    }
}

#[test]
fn a_generator_list_must_cover_the_batch() {
    // Fewer items than generators: diffusers uses the first ones.
    let first_two = TorchNoise::per_item(&[1, 2, 3])
        .draw(&[2, 4, 8, 8])
        .unwrap();
    assert_eq!(
        first_two,
        TorchNoise::per_item(&[1, 2]).draw(&[2, 4, 8, 8]).unwrap()
    );
    let mut noise = TorchNoise::per_item(&[1, 2, 3]);
    let err = noise.noise(&CpuTensor::zeros(vec![4, 4])).unwrap_err();
    assert!(matches!(
        err,
        SchedulerError::InvalidArgument {
            field: "generator",
            ..
        }
    ));
    // A refused draw consumes nothing: the right batch still gets each seed's stream.
    let ok = noise.draw(&[3, 20]).unwrap();
    assert_eq!(&ok[20..40], TorchGenerator::new(2).randn(20).as_slice());

    let err = TorchNoise::per_item(&[]).draw(&[1, 4]).unwrap_err();
    assert!(matches!(
        err,
        SchedulerError::InvalidArgument {
            field: "generator",
            ..
        }
    ));
    let err = TorchNoise::new(0).draw(&[]).unwrap_err();
    assert!(matches!(
        err,
        SchedulerError::InvalidArgument { field: "shape", .. }
    ));
}
