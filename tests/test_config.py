import pytest
import yaml

from aoiflow.config import PRESET_NAMES, ConfigError, build_config, load_config, save_config


def test_presets_match_the_reference_table():
    l1 = build_config("ganomaly-l1-l1")
    assert (l1.loss.w_con, l1.loss.w_enc, l1.loss.w_adv) == (1, 1, 20)
    assert (l1.model.latent_size, l1.model.image_size, l1.scoring.lam) == (100, 64, 0.5)
    assert (l1.loss.contextual, l1.scoring.score) == ("l1", "l1")
    for name, score in (("ganomaly-ssim-l1", "l1"), ("ganomaly-ssim-ssim", "ssim")):
        c = build_config(name)
        assert (c.loss.w_con, c.loss.w_enc, c.loss.w_adv) == (50, 1, 1)
        assert (c.model.latent_size, c.model.image_size, c.loss.ssim_window, c.scoring.lam) == (100, 128, 11, 0.8)
        assert (c.loss.contextual, c.scoring.score) == ("ssim", score)
    for name in PRESET_NAMES:
        t = build_config(name).train
        assert (t.lr, t.beta1, t.lr_schedule, t.epochs, t.batch_size) == (1e-4, 0.5, "lambda", 200, 1)


def test_precedence_preset_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"preset": "ganomaly-l1-l1", "train": {"epochs": 7, "batch_size": 4}}))
    c = build_config(config_file=f, overrides={"train": {"epochs": 3, "seed": None}})
    assert c.preset == "ganomaly-l1-l1" and c.model.image_size == 64
    assert c.train.epochs == 3 and c.train.batch_size == 4 and c.train.seed == 0


def test_yaml_round_trip(tmp_path):
    c = build_config("ganomaly-ssim-l1", overrides={"model": {"base_width": 32}})
    save_config(c, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == c


@pytest.mark.parametrize("raw, needle", [
    ({"model": {"image_size": 100}}, "power of two"),
    ({"model": {"image_size": 512}}, "power of two"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"scoring": {"lam": 1.5}}, "scoring.lam"),
    ({"loss": {"contextual": "l2"}}, "loss.contextual"),
    ({"trian": {"epochs": 3}}, "trian"),
])
def test_bad_values_name_the_file_and_field(tmp_path, raw, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(f) in str(err.value) and needle in str(err.value)


def test_broken_yaml_and_missing_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("ganomaly-l2")


FLAGS = {"train.epochs": "--epochs", "scoring.lam": "--lam", "preprocess.threshold": "--threshold"}


def test_a_bad_value_from_a_flag_names_the_flag():
    with pytest.raises(ConfigError) as err:
        build_config(overrides={"train": {"epochs": 0}}, flags=FLAGS)
    assert str(err.value) == "--epochs: Input should be greater than or equal to 1"


def test_a_flag_that_was_not_given_leaves_the_blame_on_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 0}}))
    with pytest.raises(ConfigError) as err:
        build_config(config_file=f, overrides={"train": {"epochs": None}, "scoring": {"lam": 2}}, flags=FLAGS)
    assert str(err.value) == (f"{f}: train.epochs: Input should be greater than or equal to 1; "
                              "--lam: Input should be less than or equal to 1")


def test_a_union_field_blames_its_flag_for_every_alternative():
    with pytest.raises(ConfigError) as err:
        build_config(overrides={"preprocess": {"threshold": "abc"}}, flags=FLAGS)
    problems = str(err.value).split("; ")
    assert len(problems) == 2 and all(p.startswith("--threshold: Input should be") for p in problems)


def test_value_errors_read_without_pydantic_prefix():
    with pytest.raises(ConfigError) as err:
        build_config(overrides={"model": {"image_size": 100}})
    assert str(err.value) == "settings: model.image_size: image_size must be a power of two from 32 to 256, got 100"
