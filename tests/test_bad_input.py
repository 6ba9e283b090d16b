"""Bad input gets a specific exception with a clear message, and files are never modified."""

from __future__ import annotations

import bz2
import fcntl
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from romerea_vo import lightcurves, statistics_pass
from romerea_vo.errors import (
    CompressedFieldError,
    CubeShapeError,
    FieldFormatError,
    InvalidRequestError,
    StarNotFoundError,
)
from romerea_vo.products import open_field

from .conftest import file_digests, read_ahead_threads

FIELD = "ROME-FIELD-01"


@pytest.fixture
def field_copy(synthetic_field, tmp_path) -> Path:
    """A private copy of the synthetic field that a test may damage."""
    return Path(shutil.copytree(synthetic_field, tmp_path / FIELD))


def star_in(field, quadrant: int):
    fid = int(field.quadrant_field_ids(quadrant)[0])
    return field.star(fid)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", *args], capture_output=True, text=True, timeout=120
    )


def assert_clean_cli_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("romerea-vo: error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_missing_quadrant_file(field_copy):
    (field_copy / f"{FIELD}_quad3_photometry.hdf5").unlink()
    with open_field(field_copy) as field:  # opening reads no cube ...
        lightcurves.read_points(field, star_in(field, 1))  # ... and other quadrants still work
        with pytest.raises(FieldFormatError, match="quadrant 3 photometry file is missing"):
            lightcurves.read_points(field, star_in(field, 3))
    assert_clean_cli_error(run_cli("info", str(field_copy)), "quadrant 3", "missing")


def test_cube_shape_disagrees_with_crossmatch(field_copy):
    path = field_copy / f"{FIELD}_quad2_photometry.hdf5"
    with h5py.File(path, "r") as h:
        data = h["dataset_photometry"][:-1]  # one star short
    path.unlink()
    with h5py.File(path, "w") as h:
        h.create_dataset("dataset_photometry", data=data)
    with open_field(field_copy) as field:
        n = field.quadrant_counts[2]
        with pytest.raises(CubeShapeError, match=rf"disagrees.*puts {n} stars in quadrant 2"):
            field.cube(2)
    assert_clean_cli_error(run_cli("info", str(field_copy)), "disagrees with the crossmatch file")


def test_truncated_cube_data(field_copy):
    path = field_copy / f"{FIELD}_quad4_photometry.hdf5"
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with open_field(field_copy) as field, pytest.raises(FieldFormatError, match="truncated"):
        lightcurves.read_points(field, star_in(field, 4))
    assert path.stat().st_size == size // 2  # nothing was "repaired"


def test_cube_truncated_while_streamed(field_copy):
    """A file cut short under a running pass: the read ahead's error reaches the caller
    as FieldFormatError, and no reading thread is left behind."""
    path = field_copy / f"{FIELD}_quad4_photometry.hdf5"
    with open_field(field_copy) as field:
        blocks = lightcurves.quadrant_blocks(field, 4, block_bytes=1)
        next(blocks)
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(FieldFormatError, match="ended early"):
            for _ in blocks:
                pass
    assert not read_ahead_threads()


def test_a_worker_processes_error_reaches_the_caller(field_copy, tmp_path):
    """A cube the worker processes cannot open (gone after this process opened it): the
    worker's FieldFormatError is raised here, and the workers are gone."""
    path = field_copy / f"{FIELD}_quad4_photometry.hdf5"
    with open_field(field_copy) as field:
        field.cube(4)
        path.rename(tmp_path / path.name)
        with pytest.raises(FieldFormatError, match="quad4"):
            statistics_pass.field_statistics(field, workers=2)
    assert not multiprocessing.active_children()


def test_truncated_hdf5_header(field_copy):
    path = field_copy / f"{FIELD}_quad1_photometry.hdf5"
    os.truncate(path, 100)
    with (
        open_field(field_copy) as field,
        pytest.raises(FieldFormatError, match="cannot be opened as HDF5"),
    ):
        field.cube(1)
    assert_clean_cli_error(run_cli("info", str(field_copy)), "quad1", "HDF5")


def test_compressed_field_asks_to_decompress(field_copy):
    crossmatch = field_copy / f"{FIELD}_field_crossmatch.fits"
    (field_copy / (crossmatch.name + ".bz2")).write_bytes(bz2.compress(crossmatch.read_bytes()))
    crossmatch.unlink()
    with pytest.raises(CompressedFieldError, match="bunzip2"):
        open_field(field_copy)
    assert_clean_cli_error(run_cli("info", str(field_copy)), "bzip2-compressed", "bunzip2")


def test_compressed_cube_asks_to_decompress(field_copy):
    cube = field_copy / f"{FIELD}_quad2_photometry.hdf5"
    cube.rename(cube.with_name(cube.name + ".bz2"))  # content irrelevant: the name decides
    with open_field(field_copy) as field, pytest.raises(CompressedFieldError, match="bunzip2 -k"):
        field.cube(2)


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # about our junk file
def test_not_a_field_directory(tmp_path):
    with pytest.raises(FieldFormatError, match="not a field directory"):
        open_field(tmp_path)
    with pytest.raises(FieldFormatError, match="does not exist"):
        open_field(tmp_path / "nowhere")
    (tmp_path / f"{FIELD}_field_crossmatch.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    with pytest.raises(FieldFormatError, match="cannot be read as a field crossmatch file"):
        open_field(tmp_path)


def test_star_refs_are_each_star_or_none_where_star_refuses(synthetic_field):
    """The bulk look-up of many field_ids gives what star() gives each id, and None
    where star() raises (ids out of range, a star without a quadrant)."""
    with open_field(synthetic_field) as field:
        quadrant = field.index_arrays["quadrant"]
        saved = quadrant[2]
        quadrant[2] = 0  # field_id 3: never assigned to a quadrant
        try:
            ids = np.array([0, 1, 3, 5, field.n_stars, field.n_stars + 1, 2**62, 5])
            refs = field.star_refs(ids)
            for fid, ref in zip(ids.tolist(), refs, strict=True):
                try:
                    assert ref == field.star(fid)
                except StarNotFoundError:
                    assert ref is None
            assert [r is None for r in refs] == [True, False, True, False, False, True, True, False]
            gaia = [r.gaia_source_id for r in field.star_refs(np.arange(4, 200)) if r]
            assert None in gaia and any(g is not None for g in gaia)
        finally:
            quadrant[2] = saved


def test_unknown_stars_and_positions(synthetic_field):
    before = file_digests(synthetic_field)
    with open_field(synthetic_field) as field:
        with pytest.raises(
            StarNotFoundError, match=rf"no star with field_id 0; ids run 1..{field.n_stars}"
        ):
            field.star(0)
        with pytest.raises(StarNotFoundError, match="no star with field_id"):
            field.star(field.n_stars + 1)
        with pytest.raises(StarNotFoundError, match="outside field ROME-FIELD-01"):
            field.nearest_star(10.0, 10.0)
        with pytest.raises(StarNotFoundError, match="outside field"):
            field.cone(200.0, -29.0, 60)
        s = field.star(5)
        with pytest.raises(StarNotFoundError, match=r"within 1 arcsec.*the nearest is field_id"):
            field.nearest_star(s.ra, s.dec + 5 / 3600, radius=1.0)
        with pytest.raises(
            StarNotFoundError, match=r"no star of field ROME-FIELD-01 is matched to Gaia source 1$"
        ):
            field.star_by_gaia(1)
        with pytest.raises(InvalidRequestError, match="has no dataset"):
            field.star_by_dataset_index("ROME-FIELD-01_xyz_ip", 1)
        with pytest.raises(InvalidRequestError, match="positive angle"):
            field.cone(s.ra, s.dec, -1)
        with pytest.raises(InvalidRequestError, match="not an angle"):
            import astropy.units as u

            field.cone(s.ra, s.dec, 3 * u.m)
        with pytest.raises(InvalidRequestError, match="not a valid RA/Dec"):
            field.nearest_star(s.ra, 95.0)
        with pytest.raises(InvalidRequestError, match="unknown filter"):
            lightcurves.lightcurve(field, s, filters="V")
        with pytest.raises(InvalidRequestError, match="has no dataset"):
            lightcurves.lightcurve(field, s, datasets="nope")
        with pytest.raises(InvalidRequestError, match="quality must be one of"):
            lightcurves.lightcurve(field, s, quality="best")
        with pytest.raises(InvalidRequestError, match="magnitude column"):
            lightcurves.lightcurve(field, s, mag_column="residual_x")
    assert file_digests(synthetic_field) == before


def test_cli_errors_have_no_traceback(synthetic_field):
    assert_clean_cli_error(
        run_cli("lightcurve", str(synthetic_field), "--field-id", "999999"), "no star with field_id"
    )
    assert_clean_cli_error(
        run_cli("lightcurve", str(synthetic_field), "--ra", "1", "--dec", "2"), "outside field"
    )
    assert_clean_cli_error(
        run_cli("lightcurve", str(synthetic_field), "--field-id", "1", "-o", "x.txt"),
        "cannot tell the output format",
    )
    assert_clean_cli_error(run_cli("info", "/nonexistent/field"), "does not exist")
    bad_radius = run_cli(
        "lightcurve", str(synthetic_field), "--ra", "1", "--dec", "2", "--radius", "3kg"
    )
    assert bad_radius.returncode == 2 and "not an angle" in bad_radius.stderr


def test_files_are_opened_read_only(synthetic_field):
    with open_field(synthetic_field) as field:
        cube = field.cube(1)
        arr = cube.read_star(0)
        arr[:] = 0  # a private copy: the file cannot change
        assert np.any(cube.read_star(0) != 0)
        flags = fcntl.fcntl(cube._fd, fcntl.F_GETFL)
        assert flags & os.O_ACCMODE == os.O_RDONLY
        assert field._hdul.fileinfo(0)["filemode"] == "readonly"


def test_cli_outputs_that_cannot_be_written_are_one_line_errors(synthetic_field, tmp_path):
    """Issue 16 item 8 (as root, permissions do not refuse anything: a missing directory
    and a path under a file stand for an unwritable one)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (tmp_path / "missing" / "lc.vot", blocker / "lc.vot"):
        assert_clean_cli_error(
            run_cli("lightcurve", str(synthetic_field), "--field-id", "1", "-o", str(out)),
            str(out.parent.name),
        )
    assert_clean_cli_error(
        run_cli("synth", "--stars", "20", "--images", "3", "--quiet", str(blocker / "field")),
        "Not a directory",
    )
    listing = tmp_path / "mine.csv"
    listing.write_text("id,ra,dec\n1,268.0,-29.9\n")
    assert_clean_cli_error(
        run_cli("xmatch", str(listing), str(synthetic_field), "-o", str(blocker / "m.vot")),
    )


def test_cli_negative_values_reach_the_check_that_refuses_them(synthetic_field):
    for radius in (["--radius", "-1arcsec"], ["--radius=-1arcsec"]):
        result = run_cli(
            "lightcurve", str(synthetic_field), "--ra", "268", "--dec", "-29.9", *radius
        )
        assert_clean_cli_error(result, "radius must be a positive angle")


def test_serve_refuses_a_bad_port_and_leaves_no_work_directory(synthetic_field, tmp_path):
    import socket

    env = {**os.environ, "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}
    bad = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve", str(synthetic_field), "--port", "80000"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert_clean_cli_error(bad, "port must be 0-65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = subprocess.run(
            [sys.executable, "-m", "romerea_vo.cli", "serve", str(synthetic_field), "--quiet",
             "--port", port],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
    assert_clean_cli_error(busy, "cannot listen on 127.0.0.1:" + port)
    assert not list(tmp_path.glob("romerea-vo-*")), list(tmp_path.iterdir())
