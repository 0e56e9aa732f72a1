"""The CLI: validate without Ray, clear errors with exit code 2, the closing accuracy table."""

from __future__ import annotations

from lhas_ray.cli import accuracy_text, main
from tests.synthetic_run import build_synthetic_run


def test_validate_accepts_the_packaged_configs(capsys):
    assert main(["validate", "demo"]) == 0
    assert "valid (3 stages, 13 selectors, 1 seeds)" in capsys.readouterr().out
    assert main(["validate", "study"]) == 0


def test_bad_config_exits_2_naming_the_field(capsys):
    assert main(["validate", "demo", "--set", "stages.0.budget=99999"]) == 2
    err = capsys.readouterr().err
    assert "stages.0" in err and "larger than the pool" in err


def test_run_without_output_is_refused_before_ray(capsys):
    assert main(["run", "demo"]) == 2
    assert "--output" in capsys.readouterr().err


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_closing_table_shows_each_selectors_matrix(tmp_path):
    out = str(tmp_path / "run")
    build_synthetic_run(out, selectors=["random", "rds"], seeds=[0, 1], n_stages=2)
    text = accuracy_text(out)
    assert "random  (accuracy, mean of 2 seeds)" in text and "rds" in text
    assert "after stage 2" in text and "eval2" in text


def test_a_failed_run_points_at_the_logs_of_the_folder_the_config_names(tmp_path, capsys, monkeypatch):
    """OUT comes from the config's 'output' (no --output): the failure message still names OUT/logs."""
    from ray.train import TrainingFailedError

    import lhas_ray.cli as cli

    out = tmp_path / "from-config"

    def failing_run(cfg, out_, *a, **k):
        assert out_ == str(out)
        (out / "logs").mkdir(parents=True)
        raise TrainingFailedError("worker died")

    monkeypatch.setattr(cli, "_run", failing_run)
    assert main(["run", "demo", "--set", f"output={out}"]) == 1
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err
    assert f"Full logs (driver and every Train worker): {out / 'logs'}" in err
