import pytest

from autoresearch.config import load_config, parse_duration
from autoresearch.errors import ConfigError

GOOD = '[experiment]\nrun = "python train.py"\neditable = ["train.py"]\n'


def write(tmp_path, text):
    (tmp_path / "autoresearch.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("text,expected", [("5m", 300), ("90s", 90), ("1h30m", 5400), (45, 45), ("2.5m", 150), ("500ms", 0.5)])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["5x", "", "m", -3, "0s", True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.experiment.budget == 300 and cfg.experiment.timeout == 600 and cfg.experiment.sandbox == "auto"
    assert cfg.metric.name == "val_bpb" and cfg.metric.goal == "minimize"
    assert cfg.judge.baseline_runs == 3 and cfg.judge.min_delta == "auto" and cfg.proposer.kind == "tune"


@pytest.mark.parametrize("text,needle", [
    (GOOD + "[metric]\ngoal = 'sideways'\n", "metric.goal"),
    (GOOD + "colour = 1\n", "unknown key 'experiment.colour'"),
    (GOOD + "[judge]\nbaseline_runs = 'three'\n", "judge.baseline_runs"),
    (GOOD + "[judge]\nmin_delta = -1\n", "judge.min_delta"),
    (GOOD + "budget = '5 fortnights'\n", "experiment.budget"),
    ('[experiment]\nrun = "x"\neditable = []\n', "experiment.editable"),
    ('[experiment]\neditable = ["a"]\n', "missing required key 'experiment.run'"),
    ('[experiment]\nrun = "x"\neditable = ["a"]\nprotected = ["a"]\n', "both list ['a']"),
    ('[experiment]\nrun = "x"\neditable = ["a"]\nbudget = "10m"\ntimeout = "5m"\n', "timeout"),
    ('[experiment\nrun = "x"\n', "not valid TOML"),
    (GOOD + "[proposer]\nkind = 'magic'\n", "proposer.kind"),
    (GOOD + "[surprise]\n", "unknown key 'surprise'"),
])
def test_bad_configs_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert needle in str(err.value)
    assert "autoresearch.toml" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


def test_non_utf8_file(tmp_path):
    (tmp_path / "autoresearch.toml").write_bytes(b"\xff\xfe[experiment]")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(tmp_path)
