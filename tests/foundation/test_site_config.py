import shutil
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


def example_with_credentials(tmp_path) -> Path:
    # The example names ./credentials/... next to it; those files exist on a real site only.
    path = tmp_path / "site.yaml"
    shutil.copy(EXAMPLE, path)
    (tmp_path / "credentials" / "site-a").mkdir(parents=True)
    (tmp_path / "credentials" / "site-a" / "identity.key").write_text("key")
    (tmp_path / "credentials" / "site-identities.yaml").write_text("{}")
    return path


def test_example_file_is_valid_and_relative_paths_resolve(tmp_path):
    path = example_with_credentials(tmp_path)
    cfg = load_site_config(path)
    assert cfg.site_id == "site-a"
    assert Path(cfg.state_dir).is_absolute()
    assert cfg.state_dir.startswith(str(tmp_path))
    assert cfg.identity_key == str(tmp_path / "credentials" / "site-a" / "identity.key")


@pytest.mark.parametrize(
    "key,missing",
    [
        ("identity-key", "credentials/site-a/identity.key"),
        ("site-identities", "credentials/site-identities.yaml"),
    ],
)
def test_missing_key_files_are_refused_at_load(tmp_path, key, missing):
    path = example_with_credentials(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(SiteConfigError) as info:
        load_site_config(path)
    assert info.value.key == key
    assert str(tmp_path / missing) in str(info.value)
    assert "existing file" in str(info.value)


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
    path = write(tmp_path, "site-id: a\n  bad: [\n")
    with pytest.raises(SiteConfigError) as info:
        load_site_config(path)
    assert (info.value.line, info.value.column) == (2, 6)
    assert str(info.value).startswith(f"{path}:2:6: invalid YAML: mapping values")
    with pytest.raises(SiteConfigError, match="existing"):
        load_site_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text,line,column,words",
    [
        # An unclosed quote on line 3 is only noticed by YAML at the end of the file.
        (
            "site-id: a\nstate-dir: s\ndevice: 'cpu\nseed: 0\ndata:\n  source: x\n",
            3,
            9,
            "quoted scalar",
        ),
        # An unclosed list on line 3 is noticed on line 4.
        ("site-id: a\nstate-dir: s\nseed: [1, 2\ndevice: cpu\n", 3, 7, "flow sequence"),
    ],
)
def test_yaml_errors_point_at_the_mistake_not_where_it_was_noticed(
    tmp_path, text, line, column, words
):
    path = write(tmp_path, text)
    with pytest.raises(SiteConfigError) as info:
        load_site_config(path)
    err = info.value
    assert (err.line, err.column) == (line, column)
    message = str(err)
    assert message.startswith(f"{path}:{line}:{column}: invalid YAML")
    assert words in message and "\n" not in message
    assert "key 'line" not in message


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


def test_simulated_sites_take_their_image_cap_from_the_run_config(tmp_path):
    from client_app.data import load_site_data
    from client_app.settings import ClientSettings, site_config_from_context

    node = {"partition-id": 7, "num-partitions": 50}
    base = {"sim-state-root": str(tmp_path), "num-domains": 2}
    capped = site_config_from_context(
        node, ClientSettings.from_run_config({**base, "sim-max-images": 5})
    )
    whole = site_config_from_context(node, ClientSettings.from_run_config(base))
    assert (capped.data.max_images, whole.data.max_images) == (5, 0)
    capped_data, whole_data = load_site_data(capped), load_site_data(whole)
    n_capped = len(capped_data.train_labels) + len(capped_data.test_labels)
    n_whole = len(whole_data.train_labels) + len(whole_data.test_labels)
    assert n_capped == 5 < n_whole
    with pytest.raises(ValueError, match="sim-max-images"):
        ClientSettings.from_run_config({**base, "sim-max-images": -1})
