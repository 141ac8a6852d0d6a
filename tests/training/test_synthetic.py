"""The synthetic chest radiograph generator: deterministic, strictly valid DICOM, controllable, and not trivial."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest
from pydicom import config as dcm_config

from shared.preprocessing import params_from_dataset, preprocess
from training import synthetic as syn


def test_same_seed_and_index_give_identical_cases() -> None:
    a_ds, a_label, a_mask = syn.generate_case(7, seed=3, size=64, prevalence=0.5)
    b_ds, b_label, b_mask = syn.generate_case(7, seed=3, size=64, prevalence=0.5)
    assert a_ds.PixelData == b_ds.PixelData and a_label == b_label and np.array_equal(a_mask, b_mask)
    assert a_ds.SOPInstanceUID == b_ds.SOPInstanceUID and a_ds.StudyInstanceUID == b_ds.StudyInstanceUID
    c_ds, _, _ = syn.generate_case(7, seed=4, size=64, prevalence=0.5)
    assert c_ds.PixelData != a_ds.PixelData and c_ds.SOPInstanceUID != a_ds.SOPInstanceUID


def test_written_dicom_reads_back_strictly(tmp_path) -> None:
    rows = syn.write_cohort(tmp_path, 4, seed=1, size=96, prevalence=0.5, masks=True)
    old = dcm_config.settings.reading_validation_mode
    dcm_config.settings.reading_validation_mode = dcm_config.RAISE
    try:
        for row in rows:
            ds = pydicom.dcmread(tmp_path / row["file"])
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == syn.DX_SOP_CLASS and ds.Modality == "DX"
            assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1 and ds.BitsAllocated == 16
            px = ds.pixel_array
            assert px.shape == (96, 96) and px.dtype == np.uint16
            assert int(px.max()) < 2**ds.BitsStored
            assert ds.PatientID == row["patient_id"] and ds.SOPInstanceUID == row["sop_uid"]
            assert np.load(tmp_path / f"{row['index']:06d}_mask.npy").shape == (96, 96)
    finally:
        dcm_config.settings.reading_validation_mode = old
    with open(tmp_path / "labels.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_default_size_is_512_and_render_matches_generate_case() -> None:
    spec = syn.case_spec(0, seed=0)
    assert spec.size == 512
    ds, label, mask = syn.generate_case(2, seed=9, size=64)
    rd = syn.render(syn.case_spec(2, seed=9, size=64))
    assert np.array_equal(ds.pixel_array, rd.pixels) and label == rd.spec.label and np.array_equal(mask, rd.lesion_mask)


def test_patients_have_several_studies_and_labels_follow_the_controls() -> None:
    specs = [syn.case_spec(i, seed=2) for i in range(600)]
    per_patient: dict[int, int] = {}
    for s in specs:
        per_patient[s.patient] = per_patient.get(s.patient, 0) + 1
    assert max(per_patient.values()) >= 3 and sum(1 for v in per_patient.values() if v > 1) >= 50
    assert all(s.index == i for i, s in enumerate(specs))
    prev = np.mean([s.true_label for s in specs])
    assert 0.25 <= prev <= 0.35, prev  # default prevalence 0.3
    assert np.mean([syn.case_spec(i, seed=2, prevalence=0.6).true_label for i in range(600)]) == pytest.approx(0.6,
                                                                                                             abs=0.06)
    noisy = [syn.case_spec(i, seed=2, label_noise=0.2) for i in range(600)]
    flipped = np.mean([s.label != s.true_label for s in noisy])
    assert 0.15 <= flipped <= 0.25, flipped
    with pytest.raises(ValueError, match="prevalence"):
        syn.case_spec(0, prevalence=1.5)


def test_lesion_masks_mark_consolidations_inside_the_lungs_of_positives_only() -> None:
    pos = neg = 0
    for i in range(24):
        rd = syn.render(syn.case_spec(i, seed=5, size=96, prevalence=0.5))
        if rd.spec.true_label:
            pos += 1
            assert rd.lesion_mask.sum() > 0
            # the lesion is inside the lung fields (allowing the soft edge)
            assert (rd.lesion_mask & rd.lung_mask).sum() >= 0.8 * rd.lesion_mask.sum()
        else:
            neg += 1
            assert rd.lesion_mask.sum() == 0
    assert pos and neg


def test_difficulty_scales_lesion_contrast_down() -> None:
    easy = [syn.render(syn.case_spec(i, seed=8, size=64, prevalence=1.0, difficulty=0.0)) for i in range(6)]
    hard = [syn.render(syn.case_spec(i, seed=8, size=64, prevalence=1.0, difficulty=1.0)) for i in range(6)]
    amp = lambda rds: np.mean([max(le["amp"] for le in r.lesions) for r in rds])  # noqa: E731
    assert amp(hard) < 0.6 * amp(easy)


def _lr_auc(features: list[list[float]] | list[np.ndarray], y: list[int]) -> float:
    """Cross-validated ROC AUC of a standardised logistic regression on ``features``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    p = cross_val_predict(clf, np.array(features), np.array(y), cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def test_global_statistics_and_thumbnails_do_not_solve_the_task() -> None:
    """Calibration: logistic regressions on global intensity statistics (of the model's input and of the stored
    pixels) and on a 16x16 thumbnail stay near chance, AUC <= 0.65, on the default cohort (three sites).

    Measured on 400 images at 96 px: global statistics 0.55, thumbnail 0.61; on a one-site cohort the thumbnail
    reached 0.67, which the sites' confounders bring down."""
    feats_model, feats_raw, thumbs, y = [], [], [], []
    for rd in syn.iter_cohort(400, seed=13, size=96, prevalence=0.5):
        ds = syn.to_dataset(rd)
        x = preprocess(rd.pixels, params_from_dataset(ds), size=96)
        raw = rd.pixels / float(2**rd.bits_stored - 1)
        for feats, v in ((feats_model, x), (feats_raw, raw)):
            feats.append([v.mean(), v.std(), *np.percentile(v, [1, 5, 25, 50, 75, 95, 99])])
        thumbs.append(x.reshape(16, 6, 16, 6).mean(axis=(1, 3)).ravel())
        y.append(rd.spec.label)
    assert 0.4 <= np.mean(y) <= 0.6
    for name, feats in (("model input", feats_model), ("stored pixels", feats_raw), ("16x16 thumbnail", thumbs)):
        auc = _lr_auc(feats, y)
        assert auc <= 0.65, (name, auc)


def test_sites_are_confounders_not_signals() -> None:
    """Three sites with their own look: the site is easy to tell from the image, and tells nothing of the label."""
    specs = [syn.case_spec(i, seed=4, prevalence=0.3) for i in range(3000)]
    by_site = {k: [s for s in specs if s.site == k] for k in range(len(syn.SITES))}
    for k, ss in by_site.items():
        share = len(ss) / len(specs)
        assert abs(share - syn.SITES[k].weight) < 0.05, (k, share)
        assert abs(np.mean([s.true_label for s in ss]) - 0.3) < 0.05, k  # the same prevalence everywhere
    # a patient keeps its site across studies
    sites_of_patient: dict[int, set[int]] = {}
    for s in specs:
        sites_of_patient.setdefault(s.patient, set()).add(s.site)
    assert all(len(v) == 1 for v in sites_of_patient.values())
    assert {s.site for s in (syn.case_spec(i, seed=4, sites=1) for i in range(200))} == {0}
    with pytest.raises(ValueError, match="sites"):
        syn.case_spec(0, sites=len(syn.SITES) + 1)
    # the site is what a shortcut would learn: global statistics of the stored pixels separate the sites
    feats, site = [], []
    for rd in syn.iter_cohort(150, seed=4, size=64):
        raw = rd.pixels / float(2**rd.bits_stored - 1)
        feats.append([raw.mean(), raw.std(), *np.percentile(raw, [1, 5, 25, 50, 75, 95, 99])])
        site.append(int(rd.spec.site == 0))
    assert _lr_auc(feats, site) >= 0.9


def test_one_site_renders_as_the_generator_did_and_others_add_their_marks() -> None:
    # site 0 draws nothing of its own: a one-site cohort is the generator's original images, pixel for pixel
    s0 = next(syn.case_spec(i, seed=6, size=128) for i in range(50) if syn.case_spec(i, seed=6).site == 0)
    alone = syn.case_spec(s0.index, seed=6, size=128, sites=1)
    assert np.array_equal(syn.render(s0).pixels, syn.render(alone).pixels)
    portable_site = next(k for k, p in enumerate(syn.SITES) if p.burned_in_text)
    spec = next(s for s in (syn.case_spec(i, seed=6, size=256) for i in range(200)) if s.site == portable_site)
    rd = syn.render(spec)
    top = 2**rd.bits_stored - 1
    # burned-in text (white) in the top right; a black shutter border; the lead marker bright inside the field
    assert (rd.pixels[: 256 // 8, 256 // 2:] == top).sum() > 30
    assert rd.pixels[:, :2].max() < rd.pixels.max() * 0.1 and rd.pixels[-2:, :].max() < rd.pixels.max() * 0.1
    ds = syn.to_dataset(rd)
    profile = syn.SITES[portable_site]
    assert ds.BurnedInAnnotation == "YES" and ds.ViewPosition == profile.view == "AP"
    assert (ds.InstitutionName, ds.StationName, ds.ManufacturerModelName) == (profile.institution, profile.station,
                                                                              profile.model)
    assert syn.to_dataset(syn.render(s0)).BurnedInAnnotation == "NO"
    # the lesion mask stays inside the exposed field
    positives = [syn.render(s) for s in (syn.case_spec(i, seed=6, size=128, prevalence=1.0) for i in range(40))
                 if s.site_profile.collimation[1] > 0][:5]
    for p in positives:
        assert not p.lesion_mask[:2].any() and not p.lesion_mask[:, :2].any()


def test_ct_series_is_int16_hu_volume(tmp_path) -> None:
    it = syn.iter_ct_series(seed=1, slices=40, size=64, opacities=True)
    slices = list(it)
    assert len(slices) == 40
    ds = slices[20]
    assert ds.Modality == "CT" and ds.PixelRepresentation == 1 and ds.BitsStored == 16
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1 and ds.RescaleType == "HU"
    hu = ds.pixel_array.astype(np.float32) + float(ds.RescaleIntercept)
    assert ds.pixel_array.dtype == np.int16
    assert hu.min() < -900 and (hu < -700).mean() > 0.05 and hu.max() > 300  # air/lung and bone
    positions = [float(s.ImagePositionPatient[2]) for s in slices]
    assert positions == sorted(positions, reverse=True) and len({s.SOPInstanceUID for s in slices}) == 40
    assert len({s.SeriesInstanceUID for s in slices}) == 1
    import inspect

    sig = inspect.signature(syn.iter_ct_series)
    assert sig.parameters["slices"].default == 300 and sig.parameters["size"].default == 512
    paths = syn.write_ct_series(tmp_path, seed=1, slices=2, size=32)
    assert pydicom.dcmread(paths[0]).pixel_array.shape == (32, 32)


def test_cli_writes_a_cohort(tmp_path, capsys) -> None:
    assert syn.main(["--out", str(tmp_path), "--n", "3", "--seed", "2", "--size", "48"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and len(list(tmp_path.glob("*.dcm"))) == 3
    with pytest.raises(SystemExit):
        syn.main(["--out", str(tmp_path), "--n", "0"])
    with pytest.raises(SystemExit):
        syn.main(["--out", str(tmp_path), "--n", "2", "--sites", "0"])
    with open(tmp_path / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["site"] for r in rows} <= {p.station for p in syn.SITES}


def test_cohort_shards_are_the_same_for_any_number_of_render_workers(tmp_path) -> None:
    from training.preprocess import load_shards

    one = syn.cohort_shards(tmp_path / "one", 24, 7, image_size=32, render_size=64, workers=1)
    two = syn.cohort_shards(tmp_path / "two", 24, 7, image_size=32, render_size=64, workers=2)
    assert one["counts"] == two["counts"] and sum(c["n"] for c in one["counts"].values()) == 24
    for split in ("train", "val", "test"):
        a, b = load_shards(tmp_path / "one" / split), load_shards(tmp_path / "two" / split)
        assert list(a["ids"]) == list(b["ids"]) and list(a["y"]) == list(b["y"])
        assert np.array_equal(a["x"], b["x"])
