"""What the benchmark scripts in ``bench/`` share and the tests check, so that tests import the package
and never a script: :mod:`~metaplus.benchmarking.meta_floor` (the learner's meta-gradient written out by
hand, the speed benchmark's measure of the framework's cost), :mod:`~metaplus.benchmarking.processes`
(a measurement in a fresh child process, its peak memory read by the parent, a failure named by what
was measured) and :mod:`~metaplus.benchmarking.commands` (a benchmark's command line as its saved note
shows it, without this machine's paths).
"""
