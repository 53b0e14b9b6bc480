"""training.dataset: prepared manifests and DCASE folders, what fit and evaluate read."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from asd_edge.audiofile import write_wav
from training.dataset import MANIFEST_COLUMNS, load_dataset
from training.errors import DataError
from training.synth import write_dataset


def tone(seconds: float = 0.2, rate: int = 16000, freq_hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def make_dcase(root: Path, train: int = 7, normal: int = 2, anomaly: int = 3) -> Path:
    for folder in ("train", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(train):
        write_wav(root / "train" / f"normal_id_00_{i:08d}.wav", tone(freq_hz=300 + i), 16000)
    for i in range(normal):
        write_wav(root / "test" / f"normal_id_00_{i:08d}.wav", tone(freq_hz=500 + i), 16000)
    for i in range(anomaly):
        write_wav(root / "test" / f"anomaly_id_00_{i:08d}.wav", tone(freq_hz=900 + i), 16000)
    return root


def write_manifest(root: Path, rows: list[dict[str, str]], extra: tuple[str, ...] = ()) -> Path:
    path = root / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS, *extra])
        w.writeheader()
        w.writerows(rows)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    """A small prepared dataset (non-ASCII names included) with its manifest."""
    root = tmp_path / "prep"
    rows = []
    for split, label, name, freq in [
        ("train", "normal", "train/normal/ポンプ_a_000.wav", 300),
        ("train", "normal", "train/normal/ポンプ_a_001.wav", 310),
        ("valid", "normal", "valid/normal/b_000.wav", 320),
        ("test", "normal", "test/normal/c_000.wav", 330),
        ("test", "anomaly", "test/anomaly/d_000.wav", 900),
    ]:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        write_wav(p, tone(freq_hz=freq), 16000)
        rows.append(
            {"path": name, "label": label, "split": split, "source": name[:-8], "sha256": sha(p)}
        )
    write_manifest(root, rows)
    return root


class TestManifest:
    def test_loads_a_prepared_dataset(self, prepared: Path) -> None:
        """Folder or CSV path: files by split and label, absolute paths, a content hash."""
        ds = load_dataset(prepared)
        assert ds.kind == "manifest" and ds.root == prepared
        assert len(ds.split("train")) == 2 and len(ds.split("valid")) == 1
        assert [f.path.name for f in ds.split("test", "anomaly")] == ["d_000.wav"]
        assert all(f.path.is_absolute() and f.path.is_file() for f in ds.files)
        assert ds.split("train")[0].source == "train/normal/ポンプ_a"
        same = load_dataset(prepared / "manifest.csv")
        assert same.sha256 == ds.sha256 and len(ds.sha256) == 64

    def test_hash_follows_the_data(self, prepared: Path) -> None:
        """Changing one file's recorded hash changes the dataset hash."""
        before = load_dataset(prepared).sha256
        text = (prepared / "manifest.csv").read_text(encoding="utf-8")
        row = text.splitlines()[1]
        digest = row.rsplit(",", 1)[1]
        changed = text.replace(digest, "0" * 64, 1)
        (prepared / "manifest.csv").write_text(changed, encoding="utf-8")
        assert load_dataset(prepared).sha256 != before
        with pytest.raises(DataError, match=r"row 1: train/normal/ポンプ_a_000\.wav has changed"):
            load_dataset(prepared, verify=True)

    def test_sample_rate_from_column(self, prepared: Path) -> None:
        """A sample_rate column shared by every row is the dataset's rate."""
        with (prepared / "manifest.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["sample_rate"] = "16000"
        write_manifest(prepared, rows, extra=("sample_rate",))
        assert load_dataset(prepared).sample_rate == 16000

    @pytest.mark.parametrize(
        ("column", "value", "message"),
        [
            (
                "label",
                "broken",
                r"row 2: bad column label: expected normal or anomaly, got 'broken'",
            ),
            ("split", "dev", r"row 2: bad column split"),
            ("sha256", "xyz", r"row 2: bad column sha256"),
            ("path", "train/normal/gone.wav", r"row 2: file listed but missing: .*gone\.wav"),
        ],
    )
    def test_bad_rows_are_named(
        self, prepared: Path, column: str, value: str, message: str
    ) -> None:
        """A bad manifest row is a DataError naming the file, the row and the column."""
        with (prepared / "manifest.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        rows[1][column] = value
        write_manifest(prepared, rows)
        with pytest.raises(DataError, match=message) as info:
            load_dataset(prepared)
        assert str(prepared / "manifest.csv") in str(info.value)

    def test_missing_columns_and_no_train(self, prepared: Path) -> None:
        """A manifest lacking a column, or without normal train files, is refused."""
        with (prepared / "manifest.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        write_manifest(prepared, [r for r in rows if r["split"] != "train"])
        with pytest.raises(DataError, match="no normal train files"):
            load_dataset(prepared)
        (prepared / "manifest.csv").write_text("path,label\nx.wav,normal\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"missing column.*split, source, sha256"):
            load_dataset(prepared)


class TestDcaseFolder:
    def test_splits_and_labels(self, tmp_path: Path) -> None:
        """train → train + seeded valid (15 %, at least 1); test labels from the names."""
        root = make_dcase(tmp_path / "pump")
        ds = load_dataset(root, seed=1)
        assert ds.kind == "dcase" and ds.sample_rate is None
        assert len(ds.split("train")) == 6 and len(ds.split("valid")) == 1
        assert len(ds.split("test", "normal")) == 2 and len(ds.split("test", "anomaly")) == 3
        assert all(f.label == "normal" for f in ds.split("train") + ds.split("valid"))
        same = load_dataset(root, seed=1)
        assert [f.path for f in same.split("valid")] == [f.path for f in ds.split("valid")]
        chosen = {
            load_dataset(root, seed=s).split("valid")[0].path.name for s in range(8)
        }  # the seed matters
        assert len(chosen) > 1
        half = load_dataset(root, valid_fraction=0.5)
        assert len(half.split("valid")) == 4 and len(half.split("train")) == 3

    def test_hash_is_over_content(self, tmp_path: Path) -> None:
        """Same files elsewhere → same hash; one changed sample → another hash."""
        a = make_dcase(tmp_path / "a")
        b = tmp_path / "b"
        shutil.copytree(a, b)
        assert load_dataset(a).sha256 == load_dataset(b).sha256
        write_wav(b / "test" / "normal_id_00_00000000.wav", tone(freq_hz=501), 16000)
        assert load_dataset(a).sha256 != load_dataset(b).sha256

    def test_misplaced_and_unlabelled_files_are_skipped_by_name(self, tmp_path: Path) -> None:
        """An anomaly in train/ and an unlabelled test file are skipped and named; others go on."""
        root = make_dcase(tmp_path / "pump")
        write_wav(root / "train" / "anomaly_id_00_00000009.wav", tone(), 16000)
        write_wav(root / "test" / "section_00_0001.wav", tone(), 16000)
        ds = load_dataset(root)
        assert len(ds.files) == 12
        assert len(ds.skipped) == 2
        assert any("anomaly_id_00_00000009.wav" in s and "train/" in s for s in ds.skipped)
        assert any("section_00_0001.wav" in s and "no label" in s for s in ds.skipped)

    def test_synth_output_and_other_extensions(self, tmp_path: Path) -> None:
        """The synth's DCASE layout loads; flac/m4a/ogg names are listed; non-ASCII works."""
        write_dataset(
            tmp_path, train_files=3, test_normal=1, test_anomaly=2, duration_s=0.2, progress=False
        )
        with pytest.raises(DataError, match="these folders inside are datasets: machine_00"):
            load_dataset(tmp_path)
        root = tmp_path / "machine_00"
        (root / "test" / "異常_sample.flac").write_bytes(b"not decoded here")
        (root / "test" / "notes.txt").write_text("ignored")
        ds = load_dataset(root)
        assert len(ds.split("test", "anomaly")) == 3
        assert any(f.path.name == "異常_sample.flac" for f in ds.files)

    def test_errors(self, tmp_path: Path) -> None:
        """Missing path, a plain folder, and a train/ with no normal file are DataErrors."""
        with pytest.raises(DataError, match="no such file or folder"):
            load_dataset(tmp_path / "nope")
        (tmp_path / "plain").mkdir()
        with pytest.raises(DataError, match="plain: not a dataset folder"):
            load_dataset(tmp_path / "plain")
        (tmp_path / "empty" / "train").mkdir(parents=True)
        with pytest.raises(DataError, match="train: no normal train files"):
            load_dataset(tmp_path / "empty")
