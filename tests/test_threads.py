"""Each training process gets its share of the cores (metaplus.threads), unless the user chose."""

import logging

import lightning as L
import pytest
import torch

from metaplus.config import ConfigError
from metaplus.testing import QUICK
from metaplus.threads import decide_threads, sweep_size, trainer_processes


@pytest.mark.parametrize(
    "configured, environ, cores, processes, expected",
    [
        (None, {}, 2, 1, (2, "2 cores / 1 processes")),  # one run takes every core
        (None, {}, 2, 2, (1, "2 cores / 2 processes")),  # CPU DDP, 2 ranks on 2 cores
        (None, {}, 16, 3, (5, "16 cores / 3 processes")),  # floor of the share
        (None, {}, 2, 4, (1, "2 cores / 4 processes")),  # never fewer than one
        (None, {"OMP_NUM_THREADS": "3"}, 16, 4, (3, "OMP_NUM_THREADS")),  # the user's variable wins
        (None, {"OMP_NUM_THREADS": ""}, 8, 2, (4, "8 cores / 2 processes")),  # empty = not set
        (6, {"OMP_NUM_THREADS": "3"}, 16, 4, (6, "config key threads")),  # the key wins over everything
    ],
)
def test_decision_table(configured, environ, cores, processes, expected):
    assert decide_threads(configured, environ, cores, processes) == expected


@pytest.mark.parametrize("configured", [0, -1, 1.5, True, "4"])
def test_bad_threads_key_fails_naming_it(configured):
    with pytest.raises(ConfigError, match="threads"):
        decide_threads(configured, {}, 2, 1)


def test_bad_omp_num_threads_fails_naming_it():
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
        decide_threads(None, {"OMP_NUM_THREADS": "many"}, 2, 1)


def test_processes_of_a_run_follow_the_trainer():
    assert trainer_processes({"devices": 1}, {}) == 1
    assert trainer_processes({"strategy": "ddp", "accelerator": "cpu", "devices": 2}, {}) == 2
    assert trainer_processes({"devices": [0, 1, 2]}, {}) == 3
    assert trainer_processes({"devices": "auto"}, {}) == 1
    assert trainer_processes({"devices": 4}, {"SLURM_NTASKS": "8"}) == 1  # srun gives each task its cores


def test_sweep_size_is_the_product_of_the_swept_values(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['seed=1,2,3', 'algo=maml,fomaml', 'data.shots=5', 'x=range(0,4)']\n"
    )
    assert sweep_size(tmp_path / "multirun.yaml") == 3 * 2 * 4
    assert sweep_size(tmp_path / "missing.yaml") == 1


def test_a_real_run_trains_with_the_decided_threads(make_config, monkeypatch, caplog, tmp_path):
    """OMP_NUM_THREADS unset, threads=null, one process: the run's torch threads are all the cores
    (as decided and logged); threads=1 then gives one. Read inside training by a callback."""
    from metaplus.run import run
    from metaplus.threads import available_cores

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("metaplus.run.build_callbacks", lambda cfg: [Probe()])
    before = torch.get_num_threads()
    try:
        for key, expected in (("null", available_cores()), ("1", 1)):
            seen.clear()
            with caplog.at_level(logging.INFO, logger="metaplus"):
                run(make_config([*QUICK, f"threads={key}", "test=false"], tmp_path / key))
            assert seen and set(seen) == {expected}
            assert f"threads: {expected} (" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_submitit_local_jobs_share_the_cores(tmp_path):
    """Inside a job of ``-m hydra/launcher=submitit_local seed=1,2,3``: three jobs run at once
    (the sweeper's max_batch_size caps them); under the basic launcher they run one after another."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from metaplus.compose import compose_config
    from metaplus.threads import parallel_jobs

    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['seed=1,2,3', 'data.shots=5']\n")
    for launcher, expected in (
        ("submitit_local", 3),
        ("submitit_local hydra.sweeper.max_batch_size=2", 2),
        ("basic", 1),
    ):
        name, *extra = launcher.split()
        cfg = compose_config([f"hydra/launcher={name}", *extra], keep_hydra=True)
        with read_write(cfg.hydra), open_dict(cfg):  # compose_config registered the Hydra node, read-only
            cfg.hydra.mode, cfg.hydra.sweep.dir = RunMode.MULTIRUN, str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        assert parallel_jobs() == expected, launcher


@pytest.mark.parametrize("devices", [-1, "-1", "auto"])
def test_all_gpus_count_as_one_process_each(devices, monkeypatch):
    """``devices=-1`` / ``"auto"`` start one DDP rank per visible GPU: each takes its share of the
    cores, not all of them (issue 24, bug 10). On the CPU they mean one process."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert trainer_processes({"strategy": "ddp", "accelerator": "gpu", "devices": devices}, {}) == 4
    assert trainer_processes({"strategy": "ddp", "accelerator": "auto", "devices": devices}, {}) == 4
    assert trainer_processes({"accelerator": "cpu", "devices": devices}, {}) == 1
    assert trainer_processes({"accelerator": "gpu", "devices": "0,1"}, {}) == 2
    assert trainer_processes({"accelerator": "gpu", "devices": "3"}, {}) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_processes({"accelerator": "auto", "devices": devices}, {}) == 1


def test_map_on_workers_holds_each_state_in_one_thread_at_a_time_and_restores_the_threads():
    import threading
    import time

    from metaplus.threads import map_on_workers

    lock, busy, overlaps, workers_seen = threading.Lock(), set(), [], set()

    def work(state, item):
        with lock:
            if state["name"] in busy:
                overlaps.append(state["name"])
            busy.add(state["name"])
            workers_seen.add(threading.get_ident())
        assert torch.get_num_threads() == 1
        time.sleep(0.01)  # long enough for the other worker to start meanwhile
        with lock:
            busy.discard(state["name"])
        return state["name"], item * item

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = map_on_workers(work, ((k, k + 1) for k in range(20)), [{"name": "a"}, {"name": "b"}])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert sorted(results) == list(range(20)) and [results[k][1] for k in range(20)] == [
        (k + 1) ** 2 for k in range(20)
    ]
    assert not overlaps and len(workers_seen) == 2 and {name for name, _ in results.values()} == {"a", "b"}


def test_map_on_workers_raises_what_a_worker_raised():
    from metaplus.threads import map_on_workers

    def work(state, item):
        if item == 3:
            raise ValueError("episode 3")
        return item

    with pytest.raises(ValueError, match="episode 3"):
        map_on_workers(work, ((k, k) for k in range(6)), [0, 1])
    assert map_on_workers(work, ((k, k) for k in range(3)), [0]) == {0: 0, 1: 1, 2: 2}


def test_map_on_workers_runs_fn_under_the_callers_grad_mode_and_cpu_autocast():
    """Grad mode and autocast are thread-local in torch: a worker thread starts with grad on and no
    autocast, so evaluation under Lightning's no_grad and ``bf16-mixed`` would silently change."""
    from metaplus.threads import map_on_workers

    def settings(state, item):
        return torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        seen = map_on_workers(settings, ((k, k) for k in range(4)), [0, 1])
    assert set(seen.values()) == {(False, True, torch.bfloat16)}
    assert set(map_on_workers(settings, ((k, k) for k in range(4)), [0, 1]).values()) == {(True, False, torch.bfloat16)}


SHARED_LEAF_WORKERS = """
import time, torch
from metaplus.threads import map_on_workers

param = torch.nn.Parameter(torch.randn(4, 8))

def work(_, kind):
    # What two workers of one learner do: adapt (clone its parameters, building graphs on them) and
    # index a parameter (a per-step set) while holding the GIL.
    stop = time.perf_counter() + 2.0
    while time.perf_counter() < stop:
        with torch.enable_grad():
            param.clone() if kind == "clone" else param[1]

map_on_workers(work, [(0, "clone"), (1, "index"), (2, "clone"), (3, "index")], [None, None], shared=[param])
print("finished")
"""


def test_workers_sharing_a_parameter_do_not_deadlock():
    # torch creates a leaf's gradient accumulator under the leaf's autograd lock and then takes the GIL;
    # a thread indexing the leaf holds the GIL and waits for that lock. The suite hung on it (evaluation
    # episodes on two workers) before map_on_workers held the accumulators of the shared leaves.
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", SHARED_LEAF_WORKERS], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("two workers sharing a parameter hung (autograd lock against the GIL)")
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr
