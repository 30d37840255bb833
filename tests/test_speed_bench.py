"""The speed benchmark's meta floor (metaplus.benchmarking, used by bench/speed.py) computes the learner's
own meta-gradient; its child-process helpers and saved command, and bench/reference_mamlpp.py's message.

The meta floor is the benchmark's measure of what the framework's machinery costs (learn2learn
clones, the update-rule hook, Lightning's loop): the same meta-gradient written out by hand with
torch.func. It only measures that if it computes the same thing, so its gradients are compared
with the learn2learn engine's, in float64, for plain second-order MAML, first order, and MAML++ at
epoch 0 (multi-step loss, per-step batch norm, LSLR at its initial rates).
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaplus.algorithms import MAML
from metaplus.benchmarking.commands import public_command
from metaplus.benchmarking.meta_floor import meta_floor_loss
from metaplus.benchmarking.processes import ChildFailed, measured
from metaplus.testing import REPO
from metaplus.testing import engines as engine_tests

CASES = {
    "maml_second_order": dict(),
    "fomaml": dict(first_order=True),
    "mamlpp_epoch0": dict(msl=True, lslr=True, bnrs=True, bnwb=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_meta_floor_gradient_is_the_learners_meta_gradient(case):
    make = lambda engine: MAML(
        engine_tests.conv4(), "classification", inner_steps=3, inner_lr=0.1, engine=engine, **CASES[case]
    )
    batch = engine_tests.image_batch()
    expected = {
        n.removeprefix("backbone."): g
        for n, g in engine_tests.meta_gradients(make, batch, "l2l").items()
        if n.startswith("backbone.")
    }

    torch.manual_seed(0)
    learner = engine_tests.at_epoch(make("l2l").double(), 0)
    for b in range(len(batch)):
        (meta_floor_loss(learner, learner.backbone, batch[b], torch.device("cpu")) / len(batch)).backward()
    got = {n: p.grad for n, p in learner.backbone.named_parameters() if p.grad is not None}

    assert expected and got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            got[name], expected[name], rtol=1e-6, atol=1e-8, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_meta_floor_differs_when_the_derivative_order_differs():
    """The comparison above can fail: first- and second-order meta-gradients are not equal."""
    batch = engine_tests.image_batch()
    grads = {}
    for first_order in (False, True):
        torch.manual_seed(0)
        learner = engine_tests.at_epoch(
            MAML(engine_tests.conv4(), "classification", inner_steps=3, inner_lr=0.1, first_order=first_order).double(),
            0,
        )
        meta_floor_loss(learner, learner.backbone, batch[0], torch.device("cpu")).backward()
        grads[first_order] = learner.backbone.head.weight.grad.clone()
    assert not torch.allclose(grads[False], grads[True], rtol=1e-4)


def test_saved_command_names_no_path_of_this_machine():
    ref = Path("/somewhere/mamlpp_ref")
    assert public_command(["--quick", "--reference-code", str(ref)], ref) == [
        "--quick",
        "--reference-code",
        "$METAPLUS_MAMLPP_REFERENCE",
    ]
    assert public_command([f"--reference-code={ref}"], ref) == ["--reference-code=$METAPLUS_MAMLPP_REFERENCE"]
    assert public_command(["--quick"], ref) == ["--quick", "(reference code from $METAPLUS_MAMLPP_REFERENCE)"]
    assert public_command(["--quick"], None) == ["--quick"]
    assert public_command(["--note", "load 3", "--quick", "--note=x"], None) == ["--quick"]


def test_reference_code_missing_fails_naming_where_it_looked_and_how_to_get_it(tmp_path):
    """The script as a user runs it (a test imports no bench script): it stops before importing torch."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "reference_mamlpp.py"),
            "--code",
            str(tmp_path),
            "--out",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    message = proc.stderr
    assert proc.returncode == 1, (proc.returncode, message)
    assert (
        str(tmp_path) in message and "git clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch" in message
    )
    assert not (tmp_path / "out.json").exists()


def test_a_killed_child_names_the_signal_and_the_measurement(tmp_path):
    with pytest.raises(ChildFailed, match=r"the floor child failed: killed by SIGKILL \(SIGKILL with no error"):
        measured(
            [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], "floor", cwd=tmp_path
        )
    with pytest.raises(ChildFailed, match="the train l2l child failed: exit status 3$"):
        measured([sys.executable, "-c", "raise SystemExit(3)"], "train l2l", cwd=tmp_path)


def test_a_measured_child_starts_in_the_folder_given_and_reports_its_peak_memory(tmp_path):
    script = "import os, pathlib; pathlib.Path('here.txt').write_text(os.getcwd()); b = bytearray(300 * 2**20)"
    # Measured from a small parent, as bench/speed.py's orchestrator is: on Linux a child's peak RSS
    # starts at its parent's RSS when it forks (exec keeps the old memory's high-water mark), and this
    # pytest process can hold gigabytes by now.
    parent = f"from metaplus.benchmarking.processes import measured; print(measured({[sys.executable, '-c', script]!r}, 'probe', cwd={str(tmp_path)!r}))"
    peak_gb = float(
        subprocess.run(
            [sys.executable, "-c", parent], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.split()[-1]
    )
    assert (tmp_path / "here.txt").read_text() == str(tmp_path)
    assert 0.3 <= peak_gb < 2, peak_gb


def test_a_measured_child_reports_its_cpu_time_not_the_time_it_waited(tmp_path):
    from metaplus.benchmarking.processes import run_measured_usage

    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\ntime.sleep(0.8)"
    start = time.perf_counter()
    _, cpu_s = run_measured_usage([sys.executable, "-c", burn], cwd=tmp_path)
    assert time.perf_counter() - start >= 1.4  # it slept
    assert 0.6 <= cpu_s < 1.3, cpu_s  # the CPU it burnt (plus the interpreter's start), not the sleep
