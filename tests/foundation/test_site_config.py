from pathlib import Path

import pytest
import yaml

from client_app.site_config import SiteConfigError, load_site_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "site.example.yaml"


def write(tmp_path, doc) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def base(**changes):
    doc = {"site-id": "site-a", "state-dir": "state", "data": {"source": "digits-domains"}}
    doc.update(changes)
    return doc


def test_example_file_is_valid_and_relative_paths_resolve():
    cfg = load_site_config(EXAMPLE)
    assert cfg.site_id == "site-a"
    assert Path(cfg.state_dir).is_absolute()
    assert cfg.state_dir.startswith(str(EXAMPLE.parent))


@pytest.mark.parametrize(
    "doc,key,expected",
    [
        (base(**{"site-id": "bad id!"}), "site-id", "letters"),
        (base(device="gpu"), "device", "auto, cpu"),
        (base(data={"source": "mnist"}), "data.source", "one of"),
        (
            base(data={"source": "digits-domains", "partition-id": 12}),
            "data.partition-id",
            "[0, 12)",
        ),
        (
            base(data={"source": "digits-domains", "test-fraction": 1.5}),
            "data.test-fraction",
            "(0, 1)",
        ),
        (
            base(data={"source": "digits-domains", "num-partitions": "many"}),
            "data.num-partitions",
            "an integer",
        ),
        (base(data={"source": "image-folder"}), "data.root", "folder"),
        (base(data={"source": "digits-domains", "colour": 1}), "data.colour", "known keys"),
        (base(seed=True), "seed", "an integer"),
        (base(extra=1), "extra", "known keys"),
        ({"site-id": "a"}, "state-dir", "missing"),
        (["not", "a", "mapping"], "<top level>", "mapping"),
    ],
)
def test_bad_files_name_file_key_and_expectation(tmp_path, doc, key, expected):
    path = write(tmp_path, doc)
    with pytest.raises(SiteConfigError) as info:
        load_site_config(path)
    err = info.value
    assert err.key == key
    assert expected in str(err)
    assert str(path) in str(err)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(SiteConfigError, match="line 2"):
        load_site_config(write(tmp_path, "site-id: a\n  bad: [\n"))
    with pytest.raises(SiteConfigError, match="existing"):
        load_site_config(tmp_path / "nope.yaml")


def test_image_folder_source(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 12), color=(i * 40, 0, 0)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    path = write(tmp_path, base(data={"source": "image-folder", "root": "imgs", "image-size": 16}))
    from client_app.data import load_site_data

    data = load_site_data(load_site_config(path))
    assert data.class_names == ("cat", "dog")
    assert data.train_images.shape[1:] == (16, 16, 3)
    assert len(data.train_labels) + len(data.test_labels) == 6
