"""The command line driven as a user would: subprocesses, files written, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landscape import Probe, audit
from landscape.data import digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

MEASURES = "hessian_eigenvalues,hessian_trace,sharpness_worst_l2,loss_line"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landscape.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Two briefly trained digits MLP checkpoints, a model file and a data file."""
    root = tmp_path_factory.mktemp("cli")
    loader, _ = digits_loaders(batch_size=64)
    for seed, epochs in ((0, 2), (1, 3)):
        model = train(digits_mlp(hidden=16, seed=seed), loader, epochs=epochs, lr=0.05, seed=seed)
        torch.save({"state_dict": model.state_dict()}, root / f"run{seed}_epoch_{epochs}.pt")
    (root / "net.py").write_text(
        "from landscape.data import digits_mlp\n\ndef make():\n    return digits_mlp(hidden=16)\n"
    )
    (root / "small_data.py").write_text(
        "from landscape.data import digits_tensors\n\n"
        "def load():\n    x, y = digits_tensors('train')\n    return x[:300], y[:300]\n"
    )
    x, y = digits_tensors("train", image=True)
    torch.save((x[:100], y[:100]), root / "images.pt")
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 half a zip file")
    (root / "a_file").write_text("not a folder")
    return root


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_audit_writes_reports_matching_the_python_api(workdir):
    out = workdir / "audit"
    proc = run_cli("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt",
                   "--data", "small_data.py:load", "--out", out, "--budget", "quick",
                   "--measures", MEASURES, "--no-progress", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    for name in ("report.json", "report.md", "report.html", "loss_line.png", "loss_line.pdf"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())["measures"]
    model = digits_mlp(hidden=16)
    model.load_state_dict(torch.load(workdir / "run0_epoch_2.pt")["state_dict"])
    x, y = digits_tensors("train")
    expected = audit(Probe(model, (x[:300], y[:300])), budget="quick", seed=0,
                     measures=MEASURES.split(","))
    for key in ("loss", "hessian_eigenvalues", "hessian_trace", "sharpness_worst_l2"):
        assert report[key]["value"] == pytest.approx(expected.measures[key].value, rel=1e-6), key
    assert report["hessian_trace"]["stderr"] > 0
    assert report["hessian_eigenvalues"]["cost"]["n_hvp"] > 0
    assert "hessian_eigenvalues" in (out / "report.md").read_text()
    assert "data:image/png;base64" in (out / "report.html").read_text()


def test_compare_and_track(workdir):
    out = workdir / "compare"
    proc = run_cli("compare", "run0_epoch_2.pt", "run1_epoch_3.pt", "--model", "net.py:make",
                   "--data", "small_data.py:load", "--out", out, "--measures",
                   "hessian_eigenvalues,loss_line", "--buffers", "keep", "--no-progress",
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "comparison.json").read_text())
    assert result["names"] == ["run0_epoch_2", "run1_epoch_3"]
    assert result["buffers"] == "keep"
    pair = result["pairs"][0]
    assert pair["distance"] > 0 and -1 <= pair["cosine"] <= 1
    assert pair["loss"][0] == pytest.approx(
        result["audits"]["run0_epoch_2"]["measures"]["loss"]["value"], rel=1e-6)
    for name in ("comparison.md", "lines.png", "interpolation.png"):
        assert (out / name).is_file(), name

    track_out = workdir / "track"
    args = ("track", "run0_epoch_2.pt", "run1_epoch_3.pt", "--model", "net.py:make",
            "--data", "small_data.py:load", "--out", track_out, "--measures",
            "top_eigenvalue,loss", "--lr", "0.05", "--no-progress")
    proc = run_cli(*args, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    first = json.loads((track_out / "track.json").read_text())["rows"]
    assert [r["step"] for r in first] == [2, 3]
    assert (track_out / "track.png").is_file()
    for name in ("track.md", "track.html"):  # the reports, beside track.json, their paths shown
        assert (track_out / name).is_file() and f"wrote {track_out / name}" in proc.stderr
    assert "Provenance" in (track_out / "track.md").read_text()
    assert "data:image/png;base64," in (track_out / "track.html").read_text()
    proc = run_cli(*args, cwd=workdir)  # a rerun measures nothing again
    assert proc.returncode == 0 and "measuring" not in proc.stderr
    assert json.loads((track_out / "track.json").read_text())["rows"] == first


@pytest.mark.parametrize("args, needle", [
    (("audit", "--model", "missing.py:make", "--checkpoint", "run0_epoch_2.pt", "--out", "o"),
     "file 'missing.py' does not exist"),
    (("audit", "--model", "net.py:build", "--checkpoint", "run0_epoch_2.pt", "--out", "o"),
     "has no function 'build'"),
    (("audit", "--model", "digits_cnn", "--checkpoint", "run0_epoch_2.pt", "--out", "o"),
     "checkpoint does not match the model"),
    (("audit", "--model", "net.py:make", "--checkpoint", "nope.pt", "--out", "o"),
     "does not exist"),
    (("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt", "--out", "o",
      "--measures", "hessian_eigenvalues,curvature_vibes"), "unknown measures ['curvature_vibes']"),
    (("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt"),
     "the following arguments are required: --out"),
    (("compare", "run0_epoch_2.pt", "--model", "net.py:make", "--out", "o", "--names", "a", "b"),
     "--names gives 2 names for 1 checkpoints"),
    (("track", "empty_dir", "--model", "net.py:make", "--out", "o", "--measures", "vibes"),
     "measures must be among"),
    (("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt", "--out", "o",
      "--data", "images.pt"),
     "cannot take the inputs of --data images.pt: inputs of shape (100, 1, 8, 8), but its "
     "first layer is Linear(64, ...), which takes (N, 64)"),
    (("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt", "--out", "a_file"),
     "--out 'a_file' is an existing file; give a folder"),
    (("audit", "--model", "net.py:make", "--checkpoint", "empty_dir", "--out", "o"),
     "checkpoint 'empty_dir' is a folder; give a checkpoint file"),
    (("compare", "run0_epoch_2.pt", "empty_dir", "--model", "net.py:make", "--out", "o"),
     "checkpoint 'empty_dir' is a folder"),
    (("audit", "--model", "net.py:make", "--checkpoint", "corrupt.pt", "--out", "o"),
     "checkpoint 'corrupt.pt' is not a readable PyTorch file ("),
    (("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt", "--out", "o",
      "--measures", ""), "argument --measures: names no measure"),
    (("compare", "run0_epoch_2.pt", "--model", "net.py:make", "--out", "o", "--measures", " , "),
     "argument --measures: names no measure"),
    (("track", "run0_epoch_2.pt", "--model", "net.py:make", "--out", "o", "--lr", "-1"),
     "argument --lr: must be positive; got -1"),
])
def test_bad_arguments_give_one_clear_line(workdir, args, needle):
    (workdir / "empty_dir").mkdir(exist_ok=True)
    assert_one_line_error(run_cli(*args, cwd=workdir), needle)


def test_help_lists_the_subcommands(workdir):
    proc = run_cli("--help", cwd=workdir)
    assert proc.returncode == 0
    for sub in ("audit", "compare", "plot", "track", "demo"):
        assert sub in proc.stdout


def test_errors_come_before_any_work(workdir):
    """A bad --lr is refused before any checkpoint is measured or any file written."""
    out = workdir / "track_refused"
    proc = run_cli("track", "run0_epoch_2.pt", "run1_epoch_3.pt", "--model", "net.py:make",
                   "--out", out, "--lr", "0", cwd=workdir)
    assert_one_line_error(proc, "must be positive")
    assert not out.exists()


def test_model_data_mismatch_names_the_fix(workdir):
    proc = run_cli("plot", "--model", "digits_cnn", "--data", "small_data.py:load", "--kind",
                   "1d", "--out", "p", cwd=workdir)
    assert_one_line_error(proc, "inputs of shape (300, 64), but its first layer is Conv2d(1, ...)")
    assert "reshape the inputs to (N, C, H, W)" in proc.stderr


def test_help_lists_every_accepted_form(workdir):
    audit_help = run_cli("audit", "--help", cwd=workdir).stdout
    compare_help = run_cli("compare", "--help", cwd=workdir).stdout
    flat = " ".join(audit_help.split())
    for form in ("digits_mlp", "digits_cnn", "digits_resnet,", "digits_resnet_noskip",
                 "PATH.py:FUNCTION", "package.module:FUNCTION", "digits:test", ".pt/.pth file",
                 ".safetensors", "(default: standard;"):
        assert form in flat, form
    assert "(default: quick;" in " ".join(compare_help.split())


@pytest.mark.parametrize("args, needle", [
    (("plot", "--model", "net.py:make", "--points", "0"), "argument --points: must be at least 2"),
    (("plot", "--model", "net.py:make", "--points", "ten"), "argument --points: 'ten' is not a "
                                                             "whole number"),
    (("plot", "--model", "net.py:make", "--range", "1", "-1"), "--range 1 -1: LO must be below HI"),
    (("plot", "--model", "net.py:make", "--range", "0", "nan"), "--range needs two finite"),
    (("plot", "--model", "net.py:make", "--zmax", "-1"), "argument --zmax: must be positive"),
    (("plot", "--model", "net.py:make", "--max-samples", "0"), "--max-samples: must be at least 1"),
    (("plot", "--model", "net.py:make", "--seed", "-3"), "argument --seed: must be at least 0"),
    (("plot", "--model", "net.py:make", "--log", "--linear"), "not allowed with argument --log"),
    (("audit", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt",
      "--out", "a_file/report"), "lies under the file 'a_file'"),
    (("plot", "--model", "net.py:needs_width", "--out", "p"),
     "--model 'net.py:needs_width' needs the arguments width; the command line calls it with none"),
])
def test_numbers_and_models_are_refused_in_cli_terms(workdir, args, needle):
    (workdir / "net.py").write_text(
        "from landscape.data import digits_mlp\n\ndef make():\n    return digits_mlp(hidden=16)\n"
        "\ndef needs_width(width):\n    return digits_mlp(hidden=width)\n"
    )
    proc = run_cli(*args, cwd=workdir)
    assert_one_line_error(proc, needle)
    assert "=" not in proc.stderr.split("error:")[1].split("(see")[0].replace("--", ""), \
        "the fix is named by options, not Python keywords"


def test_no_arguments_print_the_help_and_exit_2(workdir):
    proc = run_cli(cwd=workdir)
    assert proc.returncode == 2
    assert "audit" in proc.stderr and "usage:" in proc.stderr


def test_help_imports_neither_torch_nor_matplotlib(workdir):
    """`landscape --help` stays fast: the parser is built without the heavy libraries."""
    code = ("import sys, landscape.cli as c\n"
            "for argv in (['--help'], ['audit', '--help'], ['plot', '--help'], "
            "['compare', '--help'], ['track', '--help'], ['demo', '--help']):\n"
            "    try:\n        c.main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, 'matplotlib' in sys.modules, 'numpy' in sys.modules,"
            " file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=workdir, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "False False False", proc.stderr


def test_option_choices_match_the_library():
    from landscape import cli
    from landscape.audit import BUDGETS, MEASURES
    from landscape.demo import DEMO_BUDGETS
    from landscape.surface import INTERPOLATION_BUFFERS
    from landscape.track import TRACK_MEASURES

    assert cli.AUDIT_MEASURES == MEASURES and cli.BUDGETS == BUDGETS
    assert cli.TRACK_MEASURES == TRACK_MEASURES
    assert cli.INTERPOLATION_BUFFERS == INTERPOLATION_BUFFERS
    assert cli.DEMO_BUDGETS == tuple(DEMO_BUDGETS)


def test_a_failed_run_leaves_no_empty_folder(workdir):
    proc = run_cli("audit", "--model", "digits_cnn", "--checkpoint", "run0_epoch_2.pt",
                   "--out", "fresh/deeper", cwd=workdir)
    assert proc.returncode == 2
    assert not (workdir / "fresh").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", ["audit", "compare"])
def test_an_out_no_one_can_write_is_refused_before_any_work_even_as_root(workdir, command):
    """The container runs as root, for whom os.access says yes everywhere: /proc takes no new
    file from anyone, so this refusal is tested whoever runs it. Exit 2, one line, nothing
    measured (no progress line) and no folder left."""
    target = Path("/proc") / f"landscape-out-{os.getpid()}" / "deeper"
    what = (("--checkpoint", "run0_epoch_2.pt") if command == "audit"
            else ("run0_epoch_2.pt", "run1_epoch_3.pt"))
    proc = run_cli(command, *what, "--model", "net.py:make", "--data", "small_data.py:load",
                   "--out", target, cwd=workdir)
    assert_one_line_error(proc, f"--out '{target}' is not writable (its parent '/proc' cannot "
                                "be written)")
    assert not target.parent.exists()


def test_library_fixes_are_named_as_options(workdir):
    """A stored surface made with other settings: the fix names --out, not out=."""
    base = ("plot", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt",
            "--data", "small_data.py:load", "--kind", "1d", "--points", "3", "--out", "same",
            "--no-progress")
    assert run_cli(*base, cwd=workdir).returncode == 0
    proc = run_cli(*base, "--max-samples", "100", cwd=workdir)
    assert_one_line_error(proc, "pass another --out folder")


def test_progress_bars_only_on_a_terminal(workdir):
    """Redirected output (a pipe here) gets plain lines, never a bar's control characters."""
    proc = run_cli("plot", "--model", "net.py:make", "--checkpoint", "run0_epoch_2.pt",
                   "--data", "small_data.py:load", "--kind", "1d", "--points", "5",
                   "--out", "bars", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "evaluating the loss at 5 points" in proc.stderr


def test_warnings_are_reported_once_in_words(tmp_path, monkeypatch, capsys):
    import warnings

    from landscape import cli

    def warns(args):
        for _ in range(3):
            warnings.warn("hessian_eigenvalues did not converge; raise max_iter",
                          RuntimeWarning, stacklevel=1)
        return 0

    monkeypatch.setitem(cli._HANDLERS, "demo", warns)
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: hessian_eigenvalues did not converge; raise max_iter") == 1
    assert "RuntimeWarning" not in err and ".py:" not in err
