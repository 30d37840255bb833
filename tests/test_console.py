"""What a user sees: a config error in one line (exit 2), no dependency banners, a start line, a summary
that says where everything is, and train.log holding what the console showed."""

from metaplus.devices import cpu_name
from metaplus.testing import commands

BANNERS = ("Gym has been unmaintained", "litlogger", "LeafSpec", "but have passed in a `LightningDataModule`")


def test_config_error_is_one_line_and_exit_status_2(tmp_path):
    proc = commands.train("data.shots=0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == ["config error: data.shots: 0 is invalid: must be an integer >= 1"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs" / "runs").exists() or not list((tmp_path / "outputs" / "runs").iterdir())
    full = commands.train("data.shots=0", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    assert full.returncode not in (0, 2) and "Traceback" in full.stderr and "data.shots: 0 is invalid" in full.stderr


def test_import_prints_nothing(tmp_path):
    proc = commands.python(["-c", "import metaplus.api, metaplus.run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout + proc.stderr == ""


def test_short_run_console_has_no_banners_and_train_log_holds_what_it_showed(tmp_path):
    # algo.msl=true with the sinusoid preset's single inner step: a real warning the run must show
    proc = commands.train("debug=fast", "algo.msl=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert not [banner for banner in BANNERS if banner in printed], printed[-3000:]
    run_dir = commands.only_directory(tmp_path / "outputs" / "runs")
    start = (
        f"run: maml on sinusoid 5shot, backbone MLP, 1 x cpu ({cpu_name()}), precision 32-true, 1 thread per process, "
        f"run directory outputs/runs/{run_dir.name}"
    )
    end = f"results: outputs/runs/{run_dir.name}/results.json; checkpoints: outputs/runs/{run_dir.name}/checkpoints/"
    shown = [
        "preset: maml_sinusoid row 5shot",
        start,
        "test/mse  = ",
        "after 10 inner steps",
        end,
        "algo.msl=true with algo.inner_steps=1",
    ]
    log = (run_dir / "train.log").read_text()
    for line in shown:
        assert line in printed, line
        assert line in log, f"{line!r} is not in train.log"
