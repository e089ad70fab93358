"""Create or convert data: the synthetic default, the official BAIR TFRecords, or a packed cache of any
course-layout tree; or measure the synthetic data's oracle error. Bad input exits with code 2 and one
line on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from svg.data import SPLITS, convert_tfrecords, ensure_synthetic, pack
from svg.data.bair import split_files
from svg.errors import SvgError


def _synthetic(args: argparse.Namespace) -> str:
    root = ensure_synthetic(args.out, args.train, args.val, args.test, args.seed, args.workers, progress=True)
    return f"synthetic data ({args.train}/{args.val}/{args.test} sequences, seed {args.seed}) in {root}"


def _tfrecord(args: argparse.Namespace) -> str:
    print(split_files(args.src, args.val_fraction, args.seed).summary, flush=True)
    counts = convert_tfrecords(args.src, args.out, args.val_fraction, args.seed, args.pack, args.workers)
    where = f"{args.out}/.cache" if args.pack else str(args.out)
    return ", ".join(f"{split} {n}" for split, n in counts.items()) + f" sequences in {where}"


def _pack(args: argparse.Namespace) -> str:
    counts = pack(args.root, tuple(args.splits), args.seq_len, args.skip_bad, args.workers)
    summary = ", ".join(f"{split} {n}" for split, n in counts.items())
    return f"{summary} sequences packed in {args.root}/.cache"


def _oracle(args: argparse.Namespace) -> str:
    from svg.data.oracle import oracle_error, table

    result = oracle_error(
        args.seed, args.split, args.sequences, args.n_past, args.horizon, args.draws, args.workers or os.cpu_count()
    )
    return json.dumps(result) if args.json else table(result)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare_data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("synthetic", help="generate the embedded synthetic robot-pushing set")
    p.add_argument("--out", required=True, help="ROOT to write train/, validate/, test/ and .cache/ into")
    p.add_argument("--train", type=int, default=2000, help="train sequences (default 2000)")
    p.add_argument("--val", type=int, default=128, help="validate sequences (default 128)")
    p.add_argument("--test", type=int, default=256, help="test sequences (default 256)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.set_defaults(run=_synthetic)

    p = commands.add_parser(
        "tfrecord",
        help="convert the official softmotion30_44k TFRecords",
        description="Convert SRC/{train,test}/traj_<a>_to_<b>.tfrecords into the course layout under ROOT "
        "(or straight into ROOT/.cache with --pack). Frames come from i/image_aux1/encoded (raw 64x64x3 "
        "bytes, the camera the course data uses), stored unchanged; conditions are i/action then "
        "i/endeffector_pos. validate/ holds whole train files when there are enough: the sorted train files are "
        "permuted with numpy default_rng(SEED) and the first round(VAL_FRACTION * n_files) of them (at most "
        "n_files - 1) are held out. With too few train files for that (fewer than 2, or "
        "round(VAL_FRACTION * n_files) = 0, e.g. one file), single sequences are held out instead: the "
        "records of the train files, in file order, are permuted with default_rng(SEED) and the first "
        "round(VAL_FRACTION * n_records) (at least 1, at most n_records - 1) go to validate/, the rest to "
        "train/. The rule used is printed first and recorded in ROOT/.bair.json. Resumable: converted "
        "sequences and files are skipped on a re-run.",
    )
    p.add_argument("src", help="the extracted softmotion30_44k folder (holding train/ and test/)")
    p.add_argument("--out", required=True, help="ROOT to write into")
    p.add_argument("--pack", action="store_true", help="write only the packed cache, no PNGs")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of train files (with too few files: of train sequences) held out for validate/ (default 0.05)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out file or sequence choice (default 0)")
    p.set_defaults(run=_tfrecord)

    p = commands.add_parser("pack", help="pack a course-layout tree into ROOT/.cache (memory-mapped arrays)")
    p.add_argument("root", help="ROOT holding train/, validate/, test/")
    p.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to pack (default all three)"
    )
    p.add_argument("--seq-len", type=int, default=30, help="frames kept per sequence (default 30)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad sequences with a warning, don't fail")
    p.set_defaults(run=_pack)

    p = commands.add_parser(
        "oracle",
        help="the synthetic data's irreducible error beside copy-last",
        description="Re-simulate each sequence of the synthetic data (generated in memory, nothing is written) "
        "DRAWS times with its scene and actions but fresh hidden draws (ball turns, push kicks, deflections, "
        "friction) and sensor noise; half the mean squared difference between two draws is the MSE of an "
        "oracle predicting the conditional mean. Prints MSE on [0, 1] and the seed's PSNR over the first 10 and "
        "all HORIZON predicted frames: free-running (the draws share only the N_PAST context frames), one-step "
        "(they share the true history up to the frame before), each also with the noise shared (hidden draws "
        "only, and split into ball turns and pushes), the sensor noise alone, and copy-last. See docs/data.md.",
    )
    p.add_argument("--sequences", type=int, default=256, help="first N sequences of the split (default 256)")
    p.add_argument("--split", choices=SPLITS, default="test", help="split (default test)")
    p.add_argument("--n-past", type=int, default=2, help="context frames (default 2)")
    p.add_argument("--horizon", type=int, default=28, help="predicted frames (default 28)")
    p.add_argument("--draws", type=int, default=3, help="re-simulations per sequence, at least 2 (default 3)")
    p.add_argument("--seed", type=int, default=0, help="the data's generator seed (default 0, as training uses)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(run=_oracle)

    for p in commands.choices.values():
        p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = lambda message, *_a, **_k: print(f"prepare_data: warning: {message}", file=sys.stderr)
    try:
        print(args.run(args))
    except SvgError as e:
        print(f"prepare_data: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
