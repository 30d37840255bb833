"""Reproduction of the papers' rows (issue 12): one registry of rows, runs through train.py's presets,
one JSON and one markdown table, regenerable by one command, ``python -m metaplus.reproduce`` (the same
as ``python bench/reproduce.py``, the entry point the committed page's commands name).

    python bench/reproduce.py --rows quick                     # 2 tiny rows end to end, a few minutes,
                                                               # in outputs/reproduction-quick/ (its own table)
    python bench/reproduce.py --rows cpu --budget-min 30 --jobs 2    # every row, 30 min of training each
    python bench/reproduce.py --rows maml_omniglot_5w1s,mamlpp_omniglot_5w1s --budget-min 60 --seeds 1
    python bench/reproduce.py --rows time                      # time-to-accuracy runs (MAML mini-ImageNet, 60 min)
    python bench/reproduce.py --rows cpu --paper-budget         # the papers' full budgets (GPU: trainer=gpu)
    python bench/reproduce.py --rows cpu --paper-budget --estimate-only    # only the cost estimates
    python bench/reproduce.py --report-only                     # re-render from the run directories

Every run is ``python train.py algo=A data=D data.ways=W data.shots=S seed=K`` (the pair's preset
composes the published setting; nothing published is re-specified here) plus the budget overrides:

* Budget scaling (``--budget-min`` minutes of training per run): a short calibration run measures
  the seconds per meta-iteration and per validation episode of the row on this machine with this
  many threads, measured again by every invocation (the load of a shared machine moves; the latest
  measurement is kept in bench/results/reproduction/calibration.json). On a CPU the plan uses the
  calibration's CPU seconds, which the load of other jobs does not inflate (see ``calibration.timing_of``). Where the
  cost of an iteration changes over the epochs (MSL's query loss after every step, DA's first-order
  epochs), each phase is calibrated and the plan uses their mean weighted by epochs (``phases.epoch_phases``). The preset's number of
  epochs is kept, because MSL, cosine annealing and derivative-order annealing are scheduled in
  epochs, and ``data.batches_per_epoch`` shrinks so that epochs x batches (plus validations) fit 90 %
  of the budget; ``+trainer.max_time`` = the budget is the safety net. When the budget holds less
  than one meta-iteration per epoch, the run trains that many epochs of one iteration
  (``trainer.max_epochs`` lowered, the epoch-valued schedules cut, ``schedule_complete: false``).
  A preset with nothing scheduled over its epochs (MAML, FOMAML, ANIL: a constant meta learning rate)
  rounds the iterations per epoch up and trains fewer epochs instead of rounding down and losing
  up to an epoch's worth of iterations per epoch (``fewer_fuller_epochs``).
* Validation: ``data.val_episodes=100`` fixed episodes (the CI of 100 episodes is ~2 points, enough to
  pick a checkpoint), every d epochs with d the smallest divisor of the epochs giving <= 20 validations
  (so the last epoch is validated, and MAML++'s top-5 ensemble has checkpoints to choose from);
  fewer validations when 20 of them would take more than 15 % of the budget, and fewer episodes (down
  to 20) when not even 5 validations of 100 would fit (mini-ImageNet on a CPU). Test: always
  ``data.test_episodes=600`` fixed episodes (the papers' protocol).
* Resumable: run (row, seed) lives in bench/results/reproduction/<row>/seed<k>/ (``hydra.run.dir``); a
  seed with results.json (or its summary) is skipped; one with checkpoints/last.ckpt and no results
  resumes with ``ckpt_path=`` and the overrides recorded at its first launch (plan.json).

``--paper-budget`` drops the scaling (the presets' own epochs x iterations, validation every epoch) and
prints first one cost line per row: meta-iterations x s/iteration, measured by the calibration on this
device (or, with ``--no-calibrate``, the cached measurement of another device, labelled as such).
Outputs: bench/results/reproduction.json, docs/reproduction.md and the accuracy-against-training-time
curves bench/results/reproduction/curves.png (from ``time/train_s`` of metaplus.callbacks.WallClock).
``--out DIR`` keeps runs, calibrations and a table of just the rows asked for in DIR instead
(reproduction.json, reproduction.md, curves.png); the quick group does so by default, in
outputs/reproduction-quick/, so that it trains on every fresh call and never touches the committed runs.

One module per concern: ``registry`` (the rows, read from rows/*.yaml: one file per paper with each value
and its source, and rows/table.yaml), ``phases`` (the preset's schedule and its cost phases), ``planner``
(budget scaling), ``calibration``, ``runner`` (train.py per seed, skip and resume), ``records`` (per-seed
summaries), ``report`` (the reproduction record), ``render`` (markdown, curves, JSON), ``cli``;
``locations`` names the folders.
"""
