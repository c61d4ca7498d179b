"""Reading images, detecting faces, 5-point landmarks and the chips of every alignment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facekd import faces
from facekd.encoders.base import InputSpec
from facekd.errors import FaceError, FacekdError
from facekd.faces import (ARCFACE_TEMPLATE, Face, FaceAligner, align_chip, chips_from_files,
                          read_image)

DLIB_SPEC = InputSpec(size=150, mean=(0, 0, 0), std=(1, 1, 1), alignment="dlib")
ARCFACE_SPEC = InputSpec(size=112, mean=(0, 0, 0), std=(1, 1, 1), alignment="arcface")


# ---------------------------------------------------------------------- read_image
def test_read_image_returns_rgb_uint8(tmp_path):
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    img = read_image(tmp_path / "red.png")
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert (img[..., 0] == 200).all() and (img[..., 2] == 0).all()


def test_greyscale_and_pgm_images_become_rgb(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(tmp_path / "g.pgm"), grey)
    img = read_image(tmp_path / "g.pgm")
    assert img.shape == (12, 10, 3)
    assert all((img[..., c] == grey).all() for c in range(3))


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpg", b"", "empty file"),
    ("notes.jpg", b"these are not pixels", "not an image"),
    ("cut.jpg", None, "truncated JPEG"),
])
def test_unusable_files_raise_face_error_with_a_reason(tmp_path, name, content, reason):
    if content is None:  # a real JPEG cut in half
        ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                         dtype=np.uint8))
        content = buf.tobytes()[: len(buf) // 2]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FaceError, match=reason):
        read_image(tmp_path / name)


def test_missing_file_and_directory_raise_face_error(tmp_path):
    with pytest.raises(FaceError, match="no such file"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(FaceError, match="directory"):
        read_image(tmp_path)
    assert issubclass(FaceError, FacekdError)


# ---------------------------------------------------------------------- geometry (no dlib)
def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5, 2)) * 20
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = faces._similarity(src, src @ rot.T + shift)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def _landmarks_for(template_chip_points: np.ndarray, m_chip_to_img: np.ndarray) -> np.ndarray:
    return template_chip_points @ m_chip_to_img[:, :2].T + m_chip_to_img[:, 2]


def test_arcface_chip_puts_the_estimated_points_on_insightface_template():
    # Build a face whose dlib landmarks are the mean face placed by a known similarity, then check
    # the chip transform sends the mean face's eye centres, nose tip and mouth corners to the
    # template.
    scale, angle = 90.0, 0.2
    m = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 40.0],
                  [scale * np.sin(angle), scale * np.cos(angle), 30.0]])
    dlib5 = _landmarks_for(faces._DLIB5_MEAN_FACE, m)
    to_mean = faces._similarity(dlib5, faces._DLIB5_MEAN_FACE)
    for size, template in ((112, ARCFACE_TEMPLATE), (160, ARCFACE_TEMPLATE * 160 / 112)):
        to_chip = faces._compose(faces._similarity(faces._INSIGHTFACE5_MEAN_FACE, template),
                                 to_mean)
        pts_img = _landmarks_for(faces._INSIGHTFACE5_MEAN_FACE, m)
        in_chip = _landmarks_for(pts_img, to_chip)
        # a least-squares similarity between two different 5-point shapes: a few pixels apart
        assert np.abs(in_chip - template).max() < 0.06 * size
        # eyes level and the image-left eye on the left
        assert abs(in_chip[0, 1] - in_chip[1, 1]) < 1.0 and in_chip[0, 0] < in_chip[1, 0]


def test_align_chip_shapes_and_validation():
    img = np.random.default_rng(2).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    pts = np.array([[70, 50], [60, 51], [30, 50], [40, 51], [50, 75]], np.float32)
    for alignment, size in (("dlib", 150), ("arcface", 112), ("facenet", 160), ("none", 64)):
        chip = align_chip(img, pts, alignment, size)
        assert chip.shape == (size, size, 3) and chip.dtype == np.uint8
    with pytest.raises(FaceError, match="unknown alignment"):
        align_chip(img, pts, "mtcnn", 112)
    with pytest.raises(FaceError, match=r"\(5, 2\)"):
        align_chip(img, pts[:3], "arcface", 112)


def test_none_alignment_resizes_already_aligned_chips_without_detection(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.full((100, 100, 3), 40 * i, np.uint8))
    (tmp_path / "bad.png").write_bytes(b"nope")
    spec = InputSpec(size=32, mean=(0, 0, 0), std=(1, 1, 1), alignment="none")
    result = chips_from_files(paths + [tmp_path / "bad.png"], spec)
    assert result.chips.shape == (3, 32, 32, 3) and result.sources == [0, 1, 2]
    assert [p for p, _ in result.skipped] == [str(tmp_path / "bad.png")]


# ---------------------------------------------------------------------- dlib detection
@pytest.fixture(scope="module")
def dlib():
    import dlib
    return dlib


@pytest.fixture(scope="module")
def aligner(dlib):
    return FaceAligner()


def test_image_without_a_face_is_skipped_and_counted(tmp_path, aligner):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 128, np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = chips_from_files([blank, tmp_path / "broken.jpg"], DLIB_SPEC, aligner=aligner)
    assert result.chips.shape == (0, 150, 150, 3) and result.sources == []
    reasons = dict(result.skipped)
    assert reasons[str(blank)] == "no face found"
    assert "corrupt" in reasons[str(tmp_path / "broken.jpg")]


def test_bad_options_raise_face_errors(dlib):
    with pytest.raises(FaceError, match="select"):
        FaceAligner(select="biggest")
    with pytest.raises(FaceError, match="upsample"):
        FaceAligner(upsample=-1)


@pytest.fixture(scope="module")
def two_faces(faces_dir):
    """An in-memory canvas with a big and a small LFW face (nothing written to disk)."""
    people = sorted(p for p in (faces_dir / "lfw_150px").iterdir() if p.is_dir())
    big = read_image(sorted(people[0].glob("*.jpg"))[0])
    small = cv2.resize(read_image(sorted(people[1].glob("*.jpg"))[0]), (110, 110))
    canvas = np.full((150, 300, 3), 255, np.uint8)
    canvas[:, :150] = big
    canvas[20:130, 170:280] = small
    return canvas


@pytest.mark.realfaces
def test_select_largest_all_and_first(two_faces, aligner):
    everyone = aligner.detect(two_faces, select="all")
    assert len(everyone) == 2 and everyone[0].area > everyone[1].area
    largest = aligner.detect(two_faces)
    assert len(largest) == 1 and largest[0].box == everyone[0].box
    first = aligner.detect(two_faces, select="first")
    assert len(first) == 1 and first[0].score == max(f.score for f in everyone)


@pytest.mark.realfaces
def test_dlib_landmark_order_is_right_eye_left_eye_nose(two_faces, aligner):
    face = aligner.detect(two_faces)[0]
    assert isinstance(face, Face) and face.landmarks.shape == (5, 2)
    pts = face.landmarks
    assert pts[0, 0] > pts[1, 0] > pts[3, 0] > pts[2, 0]  # image-right eye first, outer then inner
    assert pts[4, 1] > pts[:4, 1].max()  # the nose base lies below the eyes


@pytest.mark.realfaces
def test_dlib_chip_is_dlibs_own_and_opencv_fallback_is_close(two_faces, aligner, dlib):
    face = aligner.detect(two_faces)[0]
    exact = aligner.chip(two_faces, face, "dlib", 150)
    shape = dlib.full_object_detection(dlib.rectangle(*face.box),
                                       [dlib.point(int(x), int(y)) for x, y in face.landmarks])
    np.testing.assert_array_equal(exact, dlib.get_face_chip(two_faces, shape, 150, 0.25))
    fallback = faces.dlib_chip_opencv(two_faces, face.landmarks)
    assert np.abs(exact.astype(float) - fallback).mean() < 2.0  # measured ~0.5 grey levels


@pytest.mark.realfaces
def test_chips_from_files_all_faces_and_sources(faces_dir, aligner):
    people = sorted(p for p in (faces_dir / "lfw_150px").iterdir() if p.is_dir())[:2]
    paths = [sorted(p.glob("*.jpg"))[0] for p in people]
    result = chips_from_files(paths, ARCFACE_SPEC, aligner=aligner, select="all", progress=False)
    assert result.chips.shape[1:] == (112, 112, 3) and len(result.chips) >= 2
    assert sorted(set(result.sources)) == [0, 1] and result.skipped == []
