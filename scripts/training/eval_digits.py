#!/usr/bin/env python3
"""Score generated digit samples against the real digits data set.

    /work/.venv/bin/python scripts/training/eval_digits.py SAMPLES_DIR --resolution R [--json OUT.json]

SAMPLES_DIR holds generated grayscale PNGs of size RxR (every *.png in it). Real and
generated images go through ONE resize path before anything is measured:

    real 8x8 digit -> 8-bit pixels (as digits.py writes them)
                   -> PIL resize((R, R), BILINEAR)      (what training feeds the model)
    both real-upsampled and generated RxR
                   -> PIL resize((8, 8), BOX) -> value * 16 / 255   (features in [0, 16])

The classifier is LogisticRegression (lbfgs, C=1) trained on the TRAIN split of
digits.py at raw 8x8 (no resize path); its log-loss training keeps predict_proba
calibrated, which the confidence threshold below relies on. (SVC's Platt
probabilities put only ~67% of real test digits above 0.9 after the resize path,
even at 98% accuracy; `--classifier svc|mlp` picks the alternatives.)

Reported (printed as a table and written as JSON with --json):
  classifier   held-out accuracy on TEST, raw and through the resize path; ECE
  real rate    fraction of TEST digits (through the path) with max prob >= 0.9
  gen rate     the same for the generated samples; ratio gen/real (target >= 0.9)
  classes      argmax shares of the generated samples, max/min share ratio,
               chi-square test against uniform
  memorisation nearest-neighbour L2 distance (8x8 features after the path) from each
               generated sample, and from each TEST digit, to the nearest TRAIN digit:
               min, 1%, 5%, median, 99%, max; "near copies" = generated samples closer to a
               train digit than the 1st percentile of the test->train distances;
               "far from train" = beyond their 99th percentile (softmax classifiers are
               confident on garbage too: uniform noise scores ~57% at >= 0.9, so read
               the confidence rate together with this).
Deterministic for a given SAMPLES_DIR.
Needs: pip install scikit-learn scipy pillow numpy
"""
import argparse
import json
import pathlib
import sys
import warnings

import numpy as np
from PIL import Image
from scipy.stats import chisquare

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from digits import load_split, to_uint8  # noqa: E402

THRESHOLD = 0.9
N_CLASSES = 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples_dir", type=pathlib.Path)
    ap.add_argument("--resolution", "-r", type=int, required=True, help="side R of the generated images")
    ap.add_argument("--json", type=pathlib.Path, help="write the report here")
    ap.add_argument("--classifier", choices=["logreg", "svc", "mlp"], default="logreg")
    args = ap.parse_args()
    R = args.resolution

    train_idx, test_idx, images, labels = load_split()
    clf = make_classifier(args.classifier)
    clf.fit(images[train_idx].reshape(len(train_idx), -1), labels[train_idx])

    train_feat = np.stack([real_features(images[i], R) for i in train_idx])
    test_feat = np.stack([real_features(images[i], R) for i in test_idx])
    files, gen_feat = load_samples(args.samples_dir, R)

    report = {
        "samples_dir": str(args.samples_dir),
        "resolution": R,
        "n_generated": len(files),
        "threshold": THRESHOLD,
        "classifier": classifier_report(clf, args.classifier, images, labels, test_idx, test_feat),
    }
    p_real = clf.predict_proba(test_feat)
    p_gen = clf.predict_proba(gen_feat)
    real_rate = float(np.mean(p_real.max(1) >= THRESHOLD))
    gen_rate = float(np.mean(p_gen.max(1) >= THRESHOLD))
    report["confidence"] = {
        "real_rate": real_rate,
        "gen_rate": gen_rate,
        "ratio": gen_rate / real_rate if real_rate > 0 else None,
        "real_mean_max_prob": float(p_real.max(1).mean()),
        "gen_mean_max_prob": float(p_gen.max(1).mean()),
    }
    report["classes"] = class_report(p_gen.argmax(1))
    report["nearest_train"] = nn_report(gen_feat, test_feat, train_feat)

    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


def make_classifier(name):
    if name == "logreg":
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=1.0, max_iter=5000)
    if name == "svc":
        from sklearn.svm import SVC
        warnings.filterwarnings("ignore", message=".*probability.*", category=FutureWarning)
        return SVC(probability=True, gamma="scale", random_state=0)
    from sklearn.neural_network import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=0)


# --- the one resize path -------------------------------------------------------------

def upsample_real(image_0_16, R):
    """A real 8x8 digit as training sees it: 8-bit pixels, bilinear to RxR."""
    return Image.fromarray(to_uint8(image_0_16), mode="L").resize((R, R), Image.BILINEAR)


def features(img_RxR):
    """Any RxR grayscale image -> 8x8 box-filtered -> 64 values in [0, 16]."""
    small = img_RxR.resize((8, 8), Image.BOX)
    return np.asarray(small, dtype=np.float64).reshape(-1) * 16.0 / 255.0


def real_features(image_0_16, R):
    return features(upsample_real(image_0_16, R))


def load_samples(samples_dir, R):
    files = sorted(samples_dir.glob("*.png"))
    if not files:
        sys.exit(f"no *.png in {samples_dir}")
    feats = []
    for f in files:
        with Image.open(f) as im:
            if im.size != (R, R):
                sys.exit(f"{f}: size {im.size}, expected {(R, R)} (--resolution)")
            feats.append(features(im.convert("L")))
    return files, np.stack(feats)


# --- the measurements ----------------------------------------------------------------

def classifier_report(clf, name, images, labels, test_idx, test_feat):
    y = labels[test_idx]
    raw = images[test_idx].reshape(len(test_idx), -1)
    p_raw = clf.predict_proba(raw)
    p_path = clf.predict_proba(test_feat)
    conf = p_path.max(1) >= THRESHOLD
    return {
        "name": name,
        "test_accuracy_raw": float(np.mean(p_raw.argmax(1) == y)),
        "test_accuracy_path": float(np.mean(p_path.argmax(1) == y)),
        "test_rate_raw": float(np.mean(p_raw.max(1) >= THRESHOLD)),
        "accuracy_of_confident_path": float(np.mean(p_path.argmax(1)[conf] == y[conf])) if conf.any() else None,
        "ece_path": expected_calibration_error(p_path, y),
    }


def expected_calibration_error(p, y, bins=10):
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(np.mean(pred[m] == y[m]) - conf[m].mean())
    return float(ece)


def class_report(pred):
    counts = np.bincount(pred, minlength=N_CLASSES)
    shares = counts / counts.sum()
    chi2, p = chisquare(counts)
    return {
        "counts": counts.tolist(),
        "shares": shares.tolist(),
        "max_min_ratio": float(counts.max() / counts.min()) if counts.min() > 0 else None,
        "chi2_uniform": float(chi2),
        "chi2_p": float(p),
    }


def nearest_distances(query, ref):
    d2 = (query ** 2).sum(1)[:, None] + (ref ** 2).sum(1)[None, :] - 2.0 * query @ ref.T
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def quantiles(d):
    return {"min": float(d.min()), "p01": float(np.quantile(d, 0.01)),
            "p05": float(np.quantile(d, 0.05)), "median": float(np.median(d)),
            "p99": float(np.quantile(d, 0.99)), "max": float(d.max())}


def nn_report(gen_feat, test_feat, train_feat):
    d_gen = nearest_distances(gen_feat, train_feat)
    d_test = nearest_distances(test_feat, train_feat)
    cut = float(np.quantile(d_test, 0.01))
    near = int(np.sum(d_gen < cut))
    far_cut = float(np.quantile(d_test, 0.99))
    far = int(np.sum(d_gen > far_cut))
    return {
        "gen_to_train": quantiles(d_gen),
        "test_to_train": quantiles(d_test),
        "near_copy_threshold": cut,
        "near_copies": near,
        "near_copy_fraction": near / len(d_gen),
        "far_threshold": far_cut,
        "far_from_train": far,
        "far_fraction": far / len(d_gen),
    }


def print_table(r):
    c, k, cl, nn = r["classifier"], r["confidence"], r["classes"], r["nearest_train"]
    print(f"digits eval: {r['n_generated']} samples from {r['samples_dir']} at {r['resolution']}x{r['resolution']}")
    print(f"classifier {c['name']}: test acc raw {c['test_accuracy_raw']:.4f}, through path "
          f"{c['test_accuracy_path']:.4f}; acc of confident {fmt(c['accuracy_of_confident_path'])}; "
          f"ECE {c['ece_path']:.4f}")
    print(f"{'':24s}{'real (test)':>12s}{'generated':>12s}")
    print(f"{'max prob >= 0.9':24s}{k['real_rate']:12.4f}{k['gen_rate']:12.4f}   ratio gen/real "
          f"{fmt(k['ratio'])} (target >= 0.9)")
    print(f"{'mean max prob':24s}{k['real_mean_max_prob']:12.4f}{k['gen_mean_max_prob']:12.4f}")
    for q in ("min", "p01", "p05", "median", "p99", "max"):
        print(f"{'NN dist to train ' + q:24s}{nn['test_to_train'][q]:12.3f}{nn['gen_to_train'][q]:12.3f}")
    print(f"near copies (< test p01 = {nn['near_copy_threshold']:.3f}): {nn['near_copies']} "
          f"({100 * nn['near_copy_fraction']:.1f}%)")
    print(f"far from train (> test p99 = {nn['far_threshold']:.3f}): {nn['far_from_train']} "
          f"({100 * nn['far_fraction']:.1f}%)")
    print("class shares (argmax): " + " ".join(f"{i}:{s:.3f}" for i, s in enumerate(cl["shares"])))
    print(f"max/min share ratio {fmt(cl['max_min_ratio'])}; chi-square vs uniform "
          f"{cl['chi2_uniform']:.2f} (p = {cl['chi2_p']:.3g})")


def fmt(x):
    return "n/a" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    main()
