from __future__ import annotations

import h5py
import numpy as np
import pytest

from pcas_cli.artifacts import ArtifactReader, ArtifactWriter, read_features, tmp_path_for
from pcas_cli.errors import PcasError

DIMS = {"T": 2, "H": 4, "W": 4, "F": 3, "M": 5, "C": 2}
META = {"classes": ["a", "b"], "task": "semantic"}


def _clip(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "clip_id": f"c{i}", "subset": "v2",
        "frames": rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8),
        "fbank": rng.normal(size=(2, 3, 5)).astype(np.float16),
        "labels": np.array([1, 0], np.uint8),
        "masks": rng.integers(0, 3, (2, 4, 4), dtype=np.uint8),
        "mask_valid": np.array([True, False]), "frame_valid": np.array([True, True]),
        "visible": np.zeros((2, 4, 4), np.uint8),
    }


def _write(path, n=3, prov=None):
    with ArtifactWriter(path, "features", DIMS, META, prov or {"stage": "test"}) as w:
        for i in range(n):
            w.append(**_clip(i))
    return path


def test_round_trip_and_deterministic_id(tmp_path):
    a = _write(tmp_path / "a.h5")
    b = _write(tmp_path / "b.h5")
    ra, rb = read_features(a), read_features(b)
    assert len(ra) == 3 and ra.clip_ids() == ["c0", "c1", "c2"]
    assert ra.artifact_id == rb.artifact_id  # same content, same fingerprint
    np.testing.assert_array_equal(ra.read("frames", 1), _clip(1)["frames"])
    assert ra.classes == ("a", "b") and ra.task == "semantic" and ra.provenance == {"stage": "test"}
    c = _write(tmp_path / "c.h5", n=2)
    assert read_features(c).artifact_id != ra.artifact_id


def test_shape_and_field_checks(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        with ArtifactWriter(tmp_path / "x.h5", "features", DIMS, META, {}) as w:
            bad = _clip(0)
            bad["frames"] = bad["frames"][:, :3]
            w.append(**bad)
    assert not (tmp_path / "x.h5").exists() and not tmp_path_for(tmp_path / "x.h5").exists()
    with pytest.raises(ValueError, match="missing"):
        with ArtifactWriter(tmp_path / "y.h5", "features", DIMS, META, {}) as w:
            clip = _clip(0)
            del clip["labels"]
            w.append(**clip)


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(PcasError, match="missing.h5: artifact not found"):
        read_features(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(PcasError, match="junk.h5"):
        read_features(tmp_path / "junk.h5")
    p = _write(tmp_path / "f.h5")
    with pytest.raises(PcasError, match="expected a predictions artifact"):
        ArtifactReader(p, "predictions")


def test_interrupted_write_leaves_nothing_and_resume_continues(tmp_path):
    out = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(out, "features", DIMS, META, {"stage": "r"}, resume=True) as w:
            w.append(**_clip(0))
            w.append(**_clip(1))
            raise KeyboardInterrupt
    assert not out.exists() and tmp_path_for(out).exists()
    with ArtifactWriter(out, "features", DIMS, META, {"stage": "r"}, resume=True) as w:
        assert w.start == 2
        w.append(**_clip(2))
    whole = _write(tmp_path / "whole.h5", prov={"stage": "r"})
    assert read_features(out).artifact_id == read_features(whole).artifact_id
    # A leftover from a different configuration is not reused.
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(out, "features", DIMS, META, {"stage": "r"}, resume=True) as w:
            w.append(**_clip(0))
            raise KeyboardInterrupt
    with ArtifactWriter(out, "features", DIMS, META, {"stage": "other"}, resume=True) as w:
        assert w.start == 0
        w.append(**_clip(0))


def test_chunked_per_clip(tmp_path):
    p = _write(tmp_path / "f.h5")
    with h5py.File(p) as f:
        assert f["frames"].chunks == (1, 2, 4, 4, 3)
        assert f["frames"].compression == "lzf"


def test_a_writer_that_cannot_start_leaves_no_tmp(tmp_path):
    out = tmp_path / "z.h5"
    with pytest.raises(ValueError):
        ArtifactWriter(out, "features", {**DIMS, "H": 0}, META, {})  # h5py refuses a zero-sized chunk
    assert not out.exists() and not tmp_path_for(out).exists()


def test_damaged_or_foreign_files_are_one_line_errors(tmp_path):
    from pcas_cli.artifacts import describe

    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(PcasError, match=r"junk\.h5: not a readable HDF5 artifact"):
        describe(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(PcasError, match=r"other\.h5: not a pcas artifact \(kind None"):
        describe(tmp_path / "other.h5")
    # a damaged chunk (bytes overwritten on disk): reading that clip names the file, the field and the clip
    p = tmp_path / "f.h5"
    with ArtifactWriter(p, "features", DIMS, META, {}) as w:
        for i in range(2):
            w.append(**{**_clip(i), "frames": np.full((2, 4, 4, 3), i, np.uint8)})  # compressible: stored as LZF
    with h5py.File(p) as f:
        info = f["frames"].id.get_chunk_info(1)
        assert info.filter_mask == 0  # the chunk went through the LZF filter
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    r = read_features(p)
    assert not r.read("frames", 0).any()
    with pytest.raises(PcasError, match=r"f\.h5: cannot read 'frames' at 1: .*the file is damaged, re-create it"):
        r.read("frames", 1)


def test_an_input_file_is_matched_by_folder_and_name_wherever_the_run_lies(tmp_path):
    from pcas_cli.provenance import check_input_file

    path = tmp_path / "copied-run/features/val.h5"
    for key in ("features/val.h5", "data/runs/x/features/val.h5", "/elsewhere/run/features/val.h5"):
        check_input_file("p.h5", {key: "aaa", "ckpt/refine.pt": "zzz"}, path, "aaa")  # current: fine
        with pytest.raises(PcasError, match=rf"p\.h5: stale input: it was made from {key} aaa"):
            check_input_file("p.h5", {key: "aaa"}, path, "bbb")
    check_input_file("p.h5", {"features/test.h5": "aaa"}, path, "bbb")  # another file: not this check's business
    with pytest.raises(PcasError, match=r"p\.h5: records no features/val\.h5 among its inputs"):
        check_input_file("p.h5", {"features/test.h5": "aaa"}, path, "bbb", required=True)
