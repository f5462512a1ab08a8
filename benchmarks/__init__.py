"""gptk's benchmark suite: `python -m benchmarks --help`.

ops.py      the op cases: sizes, providers, the bytes / FLOPs each call must move or do
model.py    GPT-2 124M training step and KV-cached decode (tokens/s)
runner.py   check each provider against the fp32 reference, then time it; one record each
timing.py   do_bench / CPU timer, peak memory, NVTX labels
env.py      device, versions, commit, and the ceilings measured at the start of each run
report.py   terminal table, JSON, markdown summary, PNG plots
profiling.py torch.profiler Chrome traces
test_*.py   the same cases through pytest-benchmark (`pytest benchmarks/ --benchmark-json ...`)
gpu_run.sh  the one-command GPU run (tests, compute-sanitizer, benchmarks) writing under $OUT
"""
