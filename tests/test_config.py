import pytest

from robustbench_convnorm.config import (ConfigError, config_from_dict, expand_grid, load_config,
                                         parse_number, parse_set)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_shipped_config_parses_and_expands():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        specs = expand_grid(cfg, source=str(path))
        assert len(specs) == len(cfg.normalizers) * len(cfg.seeds) * max(
            1, __import__("math").prod(len(v) for v in cfg.grid.values()))


def test_fractions_and_types():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number("1e-3/2") == pytest.approx(5e-4)
    cfg = config_from_dict({"train": {"eps": "8/255", "lr": 1}})
    assert cfg.train.eps == pytest.approx(8 / 255) and isinstance(cfg.train.lr, float)
    assert config_from_dict({"seeds": 3}).seeds == [3]


def test_unknown_key_names_file_key_and_closest(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "train.lrr" in msg and "did you mean 'lr'" in msg


def test_wrong_type_and_range_and_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer"):
        load_config(write(tmp_path, "train: {epochs: two}\n"))
    with pytest.raises(ConfigError, match=r"train.momentum: 1.5 is out of range; must be >= 0.0 and <= 1.0"):
        load_config(write(tmp_path, "train: {momentum: 1.5}\n"))
    with pytest.raises(ConfigError, match=r"train.method: 'fre' is not allowed \(did you mean 'free'\?\)"):
        load_config(write(tmp_path, "train: {method: fre}\n"))
    with pytest.raises(ConfigError, match=r"batchnorm: expected true or false"):
        load_config(write(tmp_path, "batchnorm: 3\n"))
    with pytest.raises(ConfigError, match=r"data.train_fraction: 0.0 is out of range; must be > 0.0"):
        load_config(write(tmp_path, "data: {train_fraction: 0}\n"))
    with pytest.raises(ConfigError, match=r"eval.evaluators\[0\]: each evaluator needs a `type`"):
        load_config(write(tmp_path, "eval: {evaluators: [{eps: 1}]}\n"))


def test_set_overrides_are_yaml(tmp_path):
    p = write(tmp_path, "normalizers: [{name: vanilla}, {name: sn}]\nseeds: [0]\n")
    cfg = load_config(p, ["seeds=[0, 1]", "normalizers=[{name: vanilla}]", "train.lr=0.01",
                          "train.eps=4/255", "normalizers.0.options.foo=3"])
    assert cfg.seeds == [0, 1]
    assert [n.name for n in cfg.normalizers] == ["vanilla"]
    assert cfg.normalizers[0].options == {"foo": 3}
    assert cfg.train.lr == 0.01 and cfg.train.eps == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_set("train.lr")
    with pytest.raises(ConfigError, match=r"trian: unknown key \(did you mean 'train'\?\)"):
        load_config(p, ["trian.lr=1"])


def test_grid_expansion_overrides_and_ids():
    raw = {"normalizers": [{"name": "vanilla"}, {"name": "oni", "overrides": {"train.lr": 0.01}}],
           "seeds": [0, 1], "grid": {"train.eps": [2 / 255, 8 / 255]}, "train": {"lr": 0.1}}
    specs = expand_grid(config_from_dict(raw))
    assert len(specs) == 2 * 2 * 2
    assert len({s.run_id for s in specs}) == 8
    lrs = {(s.normalizer.name, s.config.train.lr) for s in specs}
    assert lrs == {("vanilla", 0.1), ("oni", 0.01)}
    assert {s.config.train.eps for s in specs} == {2 / 255, 8 / 255}
    # ids are stable, and do not depend on evaluation settings or the device
    again = expand_grid(config_from_dict(raw | {"eval": {"batch_size": 7}, "device": "cpu"}))
    assert [s.run_id for s in specs] == [s.run_id for s in again]
    # ...but do depend on what is trained
    other = expand_grid(config_from_dict(raw | {"train": {"lr": 0.2}}))
    assert specs[0].run_id != other[0].run_id


def test_duplicate_runs_are_refused():
    with pytest.raises(ConfigError, match="identical"):
        expand_grid(config_from_dict({"normalizers": [{"name": "vanilla"}, {"name": "vanilla"}]}))


def test_label_and_batchnorm_override_make_distinct_runs():
    specs = expand_grid(config_from_dict(
        {"normalizers": [{"name": "vanilla"}, {"name": "vanilla", "label": "bn", "overrides": {"batchnorm": True}}]}))
    assert [s.config.batchnorm for s in specs] == [False, True]
    assert "-bn-bn-" in specs[1].run_id or "-bn" in specs[1].run_id


def test_run_id_follows_the_normalizers_defaults(monkeypatch):
    # A run trained under an old default must not be taken for one under a new default:
    # the run id hashes every option the normalizer is built with, defaults included.
    from robustbench_convnorm.normalizers import convnorm

    def run_id(options):
        cfg = config_from_dict({"normalizers": [{"name": "convnorm", "options": options}]})
        spec, = expand_grid(cfg)
        return spec.run_id, spec.normalizer.options

    plain, options = run_id({})
    assert options["affine_init"] == "identity" and "ramp_steps" in options
    assert run_id({"affine_init": "identity"})[0] == plain           # writing the default changes nothing
    assert run_id({"affine_init": "conv_default"})[0] != plain
    sig = convnorm.ConvNorm.__init__
    monkeypatch.setattr(convnorm.ConvNorm.__init__, "__kwdefaults__",
                        {**sig.__kwdefaults__, "affine_init": "conv_default"})
    assert run_id({})[0] != plain                                     # a new default, a new run


def test_an_option_alias_gives_one_run_id():
    ids = [expand_grid(config_from_dict({"normalizers": [{"name": "ocnn", "options": {key: 0.001}}]}))[0].run_id
           for key in ("lam", "lambda")]
    assert ids[0] == ids[1]
