"""A run killed with SIGKILL keeps every committed batch, and the same command finishes it."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import cafe_core

pytestmark = pytest.mark.slow

SLOW_PLUGIN = """
    import time

    from cafe_baselines.gradient_x_input import GradientXInput
    from cafe_core import hookimpl


    class SlowGradientXInput(GradientXInput):
        def attribute(self, target, x, context):
            time.sleep(0.4)
            return super().attribute(target, x, context)


    @hookimpl
    def cafe_register_attributors(register):
        register("slow_gradient_x_input", SlowGradientXInput)
"""


def install_slow_plugin(site):
    (site / "cafe_test_slow.py").write_text(textwrap.dedent(SLOW_PLUGIN))
    info = site / "cafe_test_slow-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cafe-test-slow\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[cafe]\nslow = cafe_test_slow\n")


def count(db, table):
    try:
        with sqlite3.connect(db) as connection:
            return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # the run has not created its tables yet
        return 0


def test_sigkill_mid_run_then_resume(spec_dict, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_slow_plugin(site)
    spec_dict["attributors"] = [{"name": "slow_gradient_x_input"}]
    spec_path = tmp_path / "spec.json"
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(site)}
    script = (
        "import json, sys, cafe_core; "
        "cafe_core.run(json.load(open(sys.argv[1])), sys.argv[2], progress=False)"
    )
    spec_path.write_text(json.dumps(spec_dict))
    process = subprocess.Popen([sys.executable, "-c", script, str(spec_path), str(out)], env=env)
    db = out / "run.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        if db.exists() and count(db, "units") >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    units_at_kill = count(db, "units")
    scores_at_kill = count(db, "scores")
    assert 1 <= units_at_kill < 3, "the kill should land mid-run"
    assert scores_at_kill >= units_at_kill * 2 * 2 * 2  # complete units: 2 images x 2 latents x 2 metrics
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        before = dict(connection.execute("SELECT image_id || latent || metric, score FROM scores").fetchall())

    subprocess.run([sys.executable, "-c", script, str(spec_path), str(out)], env=env, check=True)
    results = cafe_core.Results.load(out)
    assert len(results.rows) == 5 * 2 * 2
    with sqlite3.connect(db) as connection:
        after = dict(connection.execute("SELECT image_id || latent || metric, score FROM scores").fetchall())
    assert {k: after[k] for k in before} == before  # what was committed was kept, not recomputed differently
