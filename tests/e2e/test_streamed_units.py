"""A run streams its units: a dataset of 10^10 images costs the memory of a batch, with a limit and without."""

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

HUGE = 10**10
UNITS = 3
BATCH = 8

# Runs the quickstart's model on a generated dataset of `size` images, either with `limit` or through an
# executor that stops taking units after UNITS of them; prints the rows stored and the peak RSS.
SCRIPT = textwrap.dedent(
    """
    import itertools, json, resource, sys
    import cafe_core

    size, limit, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class FirstUnits:
        def execute(self, units, work, commit):
            for unit in itertools.islice(units, {units}):
                for piece in work(unit):
                    commit(piece)

    spec = {{
        "backbone": {{"name": "toy_vit"}},
        "sae": {{"name": "toy_sae", "layer": 3, "tokens": "patch"}},
        "dataset": {{"name": "shapes", "size": size, "seed": 4}},
        "targets": {{"select": "top", "count": 1, "token": "argmax", "min_relative_activation": 0}},
        "attributors": [{{"name": "gradient_x_input"}}],
        "metrics": [{{"name": "own_patch_share"}}],
        "run": {{"batch_size": {batch}, "device": "cpu", "limit": None if limit == "none" else int(limit)}},
    }}
    results = cafe_core.run(spec, out, executor=None if limit != "none" else FirstUnits(), progress=False)
    print(json.dumps({{"rows": len(results.rows), "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
    """
).format(units=UNITS, batch=BATCH)


def run_child(tmp_path, name, size, limit):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(size), str(limit), str(tmp_path / name)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_huge_dataset_costs_the_memory_of_its_batches(tmp_path):
    images = UNITS * BATCH
    small = run_child(tmp_path, "small", size=images, limit="none")
    huge_limited = run_child(tmp_path, "limited", size=HUGE, limit=images)
    huge_streamed = run_child(tmp_path, "streamed", size=HUGE, limit="none")
    assert small["rows"] == huge_limited["rows"] == huge_streamed["rows"] == images
    allowance_kib = 64 * 1024  # allocator noise; listing 10^10 images up front would need terabytes
    assert huge_limited["peak_kib"] < small["peak_kib"] + allowance_kib
    assert huge_streamed["peak_kib"] < small["peak_kib"] + allowance_kib
