"""The command line's arguments: the option values it offers, the argument types that check a
value as it is parsed, and the options of each subcommand. Kept apart from `landscape.cli` (which
runs the commands) and free of torch and matplotlib, so that `landscape --help` stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

# The option values the parser offers, kept here so that `landscape --help` imports neither torch
# nor matplotlib (tests/test_cli.py checks they equal the library's own tuples).
BUDGETS = ("quick", "standard", "thorough")
AUDIT_MEASURES = (
    "loss", "hessian_eigenvalues", "hessian_smallest_eigenvalue", "hessian_trace",
    "hessian_density", "sharpness_worst_l2", "sharpness_adaptive_worst_l2",
    "sharpness_average_l2", "first_order_flatness", "loss_line", "loss_surface",
    "pac_bayes_flatness", "local_entropy", "quadratic_agreement", "hessian_frobenius",
    "trace_ratio", "batch_spectrum", "top_eigenvalue_data_spread", "trace_data_spread",
)
TRACK_MEASURES = ("top_eigenvalue", "trace", "sharpness", "gradient_norm", "loss")
INTERPOLATION_BUFFERS = ("interpolate", "recompute", "keep")
DEMO_BUDGETS = ("full", "smoke")

SUBCOMMANDS: dict[str, str] = {
    "audit": "measure one checkpoint by every standard measure and write a report",
    "compare": "compare the minima of several checkpoints side by side",
    "plot": "draw filter-normalized 1D/2D loss surfaces of a checkpoint",
    "track": "follow chosen measures over a series of training checkpoints",
    "demo": "train four small CNNs on the built-in digits data and compare their minima",
    "plot-track": "draw sharpness against step and the loss from CurvatureMonitor logs",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="PATH.py:FUNCTION or package.module:FUNCTION that builds the model, or "
                        "a built-in model: digits_mlp, digits_cnn, digits_resnet, "
                        "digits_resnet_noskip")
    p.add_argument("--data", default="digits",
                   help="'digits' (built-in train split; also 'digits:train', 'digits:test', "
                        "'digits:all'), a .pt/.pth file holding an (inputs, targets) pair of "
                        "tensors, or PATH.py:FUNCTION or package.module:FUNCTION returning a "
                        "DataLoader, a list of batches or an (inputs, targets) pair "
                        "(default: digits)")
    p.add_argument("--device", default="cpu", help="device to measure on (default: cpu)")
    p.add_argument("--seed", type=seed_type, default=0,
                   help="seed of every estimator, 0 or more (default: 0)")
    add_progress_debug(p)


def add_progress_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress (bars on a terminal, plain lines when redirected)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


def add_scale(p: argparse.ArgumentParser) -> None:
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log", dest="log", action="store_true", default=True,
                       help="log scale (default): contour levels log-spaced above the minimum "
                            "and labelled; heatmaps and 3D views in log10 of the loss")
    scale.add_argument("--linear", dest="log", action="store_false",
                       help="linear scale: evenly spaced contour levels, the loss as it is")


def add_column(p: argparse.ArgumentParser) -> None:
    p.add_argument("--column", choices=("single", "double"), default="single",
                   help="figure width for a journal: single column (3.25 in) or double column "
                        "(6.75 in); figures are written as PDF and 300 dpi PNG "
                        "(default: single)")


def measure_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"names no measure (got {text!r}); leave it out to measure the defaults"
        )
    return names


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers "
                                         "(e.g. 16,64,256)") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers; got {text!r}")
    return sizes


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive; got {text}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}; got {text}")
        return value

    return parse


seed_type = int_at_least(0)


def audit_args(p: argparse.ArgumentParser) -> None:
    add_model_data(p)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file: a state dict in .pt/.pth (read with "
                        "weights_only=True; {'state_dict': ...}, {'model': ...} and DDP's "
                        "'module.' prefix are unwrapped) or .safetensors")
    p.add_argument("--out", required=True,
                   help="output folder for report.json/.md/.html and figures (created; an "
                        "existing folder is written into)")
    p.add_argument("--budget", choices=BUDGETS, default="standard",
                   help="effort: quick, standard or thorough (default: standard; `compare` "
                        "defaults to quick because it audits every checkpoint); quick is also "
                        "a budget of 200 gradients of time")
    p.add_argument("--max-gradients", type=positive_float, default=None,
                   help="the audit's budget in gradients of time (one gradient: a full-data "
                        "gradient of this checkpoint), split over the measures and kept "
                        "(default: 200 for quick, no limit for standard and thorough)")
    p.add_argument("--measures", type=measure_list, default=None,
                   help=f"comma-separated subset of: {', '.join(AUDIT_MEASURES)} (default: all "
                        "but pac_bayes_flatness, local_entropy, quadratic_agreement, trace_ratio, "
                        "batch_spectrum and the two data_spread measures)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="training learning rate: adds trace_ratio, tr(H) x lr / 2 (SGD is "
                        "linearly stable at a minimum only if it is <= 1)")
    p.add_argument("--batch-sizes", type=batch_sizes, default=None,
                   help="comma-separated batch sizes (e.g. 16,64,256): adds batch_spectrum, "
                        "the top eigenvalue of mini-batch Hessians, and its figure")
    add_scale(p)
    add_column(p)


def compare_args(p: argparse.ArgumentParser) -> None:
    add_model_data(p)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint files (.pt, .pth or .safetensors state dicts)")
    p.add_argument("--names", nargs="+", default=None,
                   help="names of the checkpoints (default: their file names)")
    p.add_argument("--out", required=True,
                   help="output folder for comparison.json/.md/.html and figures")
    p.add_argument("--budget", choices=BUDGETS, default="quick",
                   help="effort per checkpoint: quick, standard or thorough (default: quick; "
                        "`audit` defaults to standard)")
    p.add_argument("--measures", type=measure_list, default=None,
                   help=f"comma-separated subset of: {', '.join(AUDIT_MEASURES)} (default: all "
                        "but loss_surface and the three costly optional ones)")
    p.add_argument("--buffers", choices=("auto", *INTERPOLATION_BUFFERS), default="auto",
                   help="BatchNorm statistics along the interpolation paths: auto (default: "
                        "recompute when the model has BatchNorm, else interpolate), recompute "
                        "(re-estimated at each point, the 'repair' of Git Re-Basin: the fair "
                        "barrier for BatchNorm networks), interpolate or keep")
    p.add_argument("--data-b", default=None,
                   help="a second data set (same forms as --data): each checkpoint is also "
                        "compared on --data against --data-b (spectral norm of H_a - H_b, "
                        "gradient distance and cosine); one checkpoint compares two domains")
    p.add_argument("--head", type=measure_list, default=None,
                   help="with --data-b: comma-separated parameter names or module prefixes "
                        "to compare across the data sets, e.g. the classifier head "
                        "(default: all parameters)")
    add_scale(p)
    add_column(p)


def track_args(p: argparse.ArgumentParser) -> None:
    add_model_data(p)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT_DIR_OR_FILES",
                   help="a folder of checkpoints (.pt, .pth, .safetensors; sorted by the step "
                        "in their names) or the checkpoint files in order")
    p.add_argument("--measures", type=measure_list, default=["top_eigenvalue"],
                   help=f"comma-separated subset of: {', '.join(TRACK_MEASURES)} "
                        "(default: top_eigenvalue)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (positive): draws the edge of stability 2/lr on the "
                        "eigenvalue plot")
    p.add_argument("--out", required=True,
                   help="output folder (track.json, track.csv, track.png); reruns resume")
    add_column(p)


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--budget", choices=DEMO_BUDGETS, default="full",
                   help="full: the four optimizers trained to convergence and compared with "
                        "the quick audit budget (default); smoke: a few epochs and a few "
                        "measures, to check an installation")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed, 0 or more (default: 0)")
    add_scale(p)
    add_column(p)
    add_progress_debug(p)


def plot_args(p: argparse.ArgumentParser) -> None:
    add_model_data(p)
    p.add_argument("--checkpoint", default=None, help="state dict to load (.pt/.pth/.safetensors)")
    p.add_argument("--kind", choices=("1d", "2d"), default="2d", help="line or plane (default 2d)")
    p.add_argument("--out", default="plot-output", help="output folder (default: plot-output)")
    p.add_argument("--points", type=int_at_least(2), default=None,
                   help="points per axis, 2 or more (default: 51 in 1d, 25 in 2d)")
    p.add_argument("--range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"),
                   help="coordinate range of each axis, LO below HI (default: -1 1)")
    p.add_argument("--normalization", default="filter",
                   choices=("filter", "layer", "model", "none"),
                   help="direction normalization (default: filter, Li et al. 2018)")
    p.add_argument("--max-samples", type=int_at_least(1), default=None,
                   help="evaluate each point on a subset of this many samples, 1 or more "
                        "(with stderr)")
    add_scale(p)
    p.add_argument("--zmax", type=positive_float, default=None,
                   help="clip the 3D surface at this loss (positive, in loss units also with "
                        "--log); the clip is stated on the figure (default: no clip)")
    add_column(p)
