import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_package_imports_neither_torch_nor_flwr():
    code = (
        "import sys, secpc, secpc.channel, secpc.lcc;"
        "bad = [m for m in ('torch', 'flwr') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_benchmark_cli_small(tmp_path):
    out = tmp_path / "secure.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.secure",
            "--sites",
            "9",
            "--dim",
            "10",
            "--clusters",
            "3",
            "--k",
            "2",
            "--t",
            "1",
            "--drop",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert last["correct"] is True
    for key in (
        "seconds_encode_per_site",
        "seconds_coded_distance_per_site",
        "seconds_decode_server",
        "bytes_up_per_site",
        "ratio_vs_plaintext",
    ):
        assert key in last
