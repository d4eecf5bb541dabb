"""The `distill` command line. Each subcommand takes optional YAML config files and
``key=value`` overrides after its flags, e.g. ``distill teacher train configs/teacher/default.yaml
train.steps=100``."""

from __future__ import annotations

import argparse
import sys

from distill.config import ConfigError
from scenes.data import DATA_ROOT

CONFIG_HELP = "config files (*.yaml) and key=value overrides, applied in order"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="*", metavar="CONFIG|KEY=VALUE", help=CONFIG_HELP)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="make and inspect the procedural world's datasets")
    dsub = data.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("make", help="render a split of the world into safetensors shards")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--count", type=int, required=True, help="number of objects")
    p.add_argument("--root", default=None, help=f"output root (default {DATA_ROOT})")
    _add_config(p)
    p = dsub.add_parser("show", help="contact sheet of one object: condition, targets, held-out")
    p.add_argument("--seed", type=int, default=0, help="world seed of the object")
    p.add_argument("--out", default="sheet.png", help="output PNG")
    _add_config(p)


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print and save their figures")
    bsub = bench.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = bsub.add_parser("render", help="tile rasterizer vs dense reference, forward and backward")
    p.add_argument("--out", default="runs/bench/render.json", help="output JSON")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    p.add_argument("--quick", action="store_true", help="small cases only (for smoke tests)")

    p = bsub.add_parser(
        "lora", help="a LoRA student's network call, unmerged and merged, vs teacher"
    )
    p.add_argument("--student", default="shipped/students/dmd2", help="a LoRA student folder")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--out", default="runs/bench/lora.json", help="output JSON")

    p = bsub.add_parser("teacher", help="one denoising step of each teacher family")
    p.add_argument("folders", nargs="+", help="teacher folders (lab, Zero123++, MVDream, ...)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (median) after warm-up")
    p.add_argument("--threads", type=int, default=0, help="pin torch CPU threads (0: default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="runs/bench/teacher.json", help="output JSON")

    p = bsub.add_parser("scale", help="cost of each stage vs image size and batch, peak memory")
    p.add_argument("--sizes", default="32,64,128,256", help="comma-separated image sizes (px)")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (median) after warm-up")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="docs/bench/scale", help="output path without suffix")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per configuration")

    p = bsub.add_parser("compile", help="one-step pipeline: torch.compile vs eager, same run")
    p.add_argument("--student", default="shipped/students/shortcut", help="a student folder")
    p.add_argument("--recon", default="shipped/recon", help="reconstructor folder")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (median) after warm-up")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--no-channels-last", action="store_true", help="compile without it")
    p.add_argument("--out", default="docs/bench/compile.json", help="output JSON")

    p = bsub.add_parser("recon", help="each reconstructor's forward at its own rig size")
    p.add_argument("names", nargs="+", help="reconstructor folders, or lgm-big (random weights)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (median) after warm-up")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="runs/bench/recon.json", help="output JSON")


def _add_teacher(sub) -> None:
    teacher = sub.add_parser("teacher", help="train, sample and evaluate the multi-view teacher")
    tsub = teacher.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = tsub.add_parser("train", help="train the lab teacher (resumes a killed run)")
    _add_config(p)
    p = tsub.add_parser("sample", help="grid of generated views next to the truth")
    _add_teacher_args(p)
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first object")
    p.add_argument("--count", type=int, default=4, help="test objects to sample")
    p.add_argument("--out", default="grid.png", help="output PNG")
    p.add_argument(
        "--views-out", default="", help="also the first object's views as the reconstructor's grid"
    )
    p = tsub.add_parser(
        "eval", help="the quality axis vs step count (val to choose, test to report)"
    )
    _add_teacher_args(p)
    p.add_argument("--steps", default="1,2,4,8,16,50", help="comma-separated step counts")
    p.add_argument("--count", type=int, default=64, help="objects of the split")
    p.add_argument("--split", default="test", choices=["val", "test"], help="evaluation split")
    p.add_argument("--out", default="runs/teacher_eval", help="output folder")
    p.add_argument(
        "--targets",
        default="",
        help="a reference teacher's quality.json: decide the 50-step row against the teacher "
        "targets (seen side, sharpness, unseen side, FID vs the reference) into targets.md",
    )
    p = tsub.add_parser(
        "inspect", help="a teacher folder's family, schedule, grid, cameras and condition (or why "
        "it is refused)",
    )  # fmt: skip
    p.add_argument("folder", help="teacher folder (lab, diffusers, Zero123++, MVDream/ImageDream)")


def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="shipped/teacher", help="teacher folder")
    p.add_argument("--sampler", default="euler", help="euler | heun | ddim | dpmpp")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--data-root", default=DATA_ROOT, help="dataset root (test split)")


def _add_recon(sub) -> None:
    recon = sub.add_parser("recon", help="train, evaluate and run the Gaussian reconstructor")
    rsub = recon.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = rsub.add_parser("train", help="train the reconstructor (resumes a killed run)")
    _add_config(p)
    p = rsub.add_parser("eval", help="held-out PSNR/SSIM, Chamfer, latency vs a naive baseline")
    p.add_argument("--recon", default="shipped/recon", help="reconstructor folder")
    p.add_argument("--count", type=int, default=64, help="test objects")
    p.add_argument("--out", default="runs/recon_eval", help="output folder")
    p.add_argument("--data-root", default=DATA_ROOT, help="dataset root (test split)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p = rsub.add_parser("run", help="views -> 3DGS PLY (+ a contact sheet of renders)")
    p.add_argument("--recon", default="shipped/recon", help="reconstructor folder")
    p.add_argument(
        "--views",
        required=True,
        help="a 2x2 grid PNG, a folder of 4 PNGs, or a NeRF-synthetic folder",
    )
    p.add_argument("--out", default="object.ply", help="output PLY")
    p.add_argument("--renders", default=None, help="optional contact sheet PNG of renders")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _add_encoder_metrics(sub) -> None:
    enc = sub.add_parser("encoder", help="the in-domain feature encoder for FID/KID")
    esub = enc.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = esub.add_parser("train", help="train the feature encoder on world views")
    _add_config(p)

    met = sub.add_parser("metrics", help="the quality axis: calibrate its metrics")
    msub = met.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("calibrate", help="controlled degradations of true views -> calibration")
    _add_config(p)


def _add_students(sub) -> None:
    from distill.methods import METHODS

    p = sub.add_parser("train", help="distill the teacher into a student with one method")
    p.add_argument("--method", required=True, help=" | ".join(METHODS))
    p.add_argument("--teacher", default=None, help="teacher folder (default: teacher= in config)")
    _add_config(p)
    p = sub.add_parser("sample", help="grid of a student's views next to the truth")
    p.add_argument("--student", required=True, help="student folder")
    p.add_argument("--steps", type=int, required=True, help="sampling steps")
    p.add_argument("--teacher", default=None, help="teacher folder (default: the card's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first object")
    p.add_argument("--count", type=int, default=4, help="test objects")
    p.add_argument("--out", default="student_grid.png", help="output PNG")
    p.add_argument("--data-root", default=DATA_ROOT, help="dataset root (test split)")
    p = sub.add_parser("compare", help="students vs the teacher at the same steps and at 50")
    p.add_argument("--students", required=True, help="comma-separated student folders")
    p.add_argument("--steps", default="1,2,4", help="comma-separated step counts")
    p.add_argument("--count", type=int, default=64, help="test objects")
    p.add_argument("--teacher", default="shipped/teacher", help="teacher folder")
    p.add_argument(
        "--guidance", type=float, default=1.0, help="teacher classifier-free guidance scale"
    )
    p.add_argument("--out", default="runs/compare", help="output folder")
    p.add_argument("--data-root", default=DATA_ROOT, help="dataset root (test split)")


def _add_sweep_serve_demo(sub) -> None:
    p = sub.add_parser("sweep", help="end-to-end steps vs quality vs latency, Pareto plot, report")
    p.add_argument("--models", default=None, help="comma-separated: teacher and/or student dirs")
    p.add_argument("--steps", default=None, help="comma-separated step counts")
    p.add_argument("--samplers", default=None, help="comma-separated teacher samplers")
    p.add_argument("--out", default=None, help="run folder (default runs/sweep)")
    p.add_argument(
        "--skip-unsupported",
        action="store_true",
        help="skip cells a student cannot run (with the reason) instead of failing",
    )
    _add_config(p)

    p = sub.add_parser("serve", help="HTTP service: image -> views + Gaussians, hot-swap students")
    p.add_argument("--students", default=None, help="folder of student folders")
    p.add_argument("--reconstructor", default=None, help="reconstructor folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    _add_config(p)

    p = sub.add_parser("demo", help="the main job: a short end-to-end run on the shipped defaults")
    p.add_argument("--out", default="runs/demo", help="output folder")
    _add_config(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="distill",
        description="Diffusion step-reduction and distillation lab: image -> views -> Gaussians.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add in (
        _add_data,
        _add_bench,
        _add_teacher,
        _add_recon,
        _add_encoder_metrics,
        _add_students,
        _add_sweep_serve_demo,
    ):
        add(sub)
    return ap


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--steps must be comma-separated integers, got {text!r}") from e
    if not steps or min(steps) < 1:
        raise ValueError(f"--steps must list positive integers, got {text!r}")
    return steps


def _ints(text: str, flag: str) -> list[int]:
    """Comma-separated positive integers of ``flag``, or a ValueError naming it."""
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise ValueError(f"{flag} must list positive integers separated by commas, got {text!r}")
    return out


def _root_arg(args: argparse.Namespace) -> list[str]:
    return [f"root={args.root}"] if getattr(args, "root", None) else []


def _data(args: argparse.Namespace) -> None:
    from distill import data_cmd

    if args.sub == "make":
        data_cmd.make(args.split, args.count, _root_arg(args) + args.config)
    else:
        data_cmd.show(args.seed, args.out, args.config)


def _bench(args: argparse.Namespace) -> None:
    if args.sub == "teacher":
        from distill.bench_teacher import bench_teacher

        bench_teacher(args.folders, args.out, args.repeats, args.device, args.threads)
        return
    if args.sub == "compile":
        from distill.bench_compile import bench_compile

        batches = _ints(args.batches, "--batches")
        cl = not args.no_channels_last
        bench_compile(args.student, args.recon, args.out, batches, args.repeats, args.device, cl)
        return
    if args.sub == "scale":
        from distill.bench_scale import STAGES, bench_scale

        stages = args.stages.split(",") if args.stages else STAGES
        sizes, batches = _ints(args.sizes, "--sizes"), _ints(args.batches, "--batches")
        bench_scale(args.out, sizes, batches, stages, args.repeats, args.device, args.timeout_s)
        return
    if args.sub == "recon":
        from distill.bench_recon import bench_recon

        bench_recon(args.names, args.out, args.repeats, args.device)
        return
    if args.sub == "lora":
        from distill.bench_lora import bench_lora

        bench_lora(args.student, args.out, repeats=args.repeats)
        return
    from distill.bench import bench_render

    cases = [(256, 4, 16)] if args.quick else None
    bench_render(args.out, repeats=args.repeats, cases=cases)


def _teacher(args: argparse.Namespace) -> None:
    if args.sub == "inspect":
        from distill.inspect_cmd import inspect_teacher

        inspect_teacher(args.folder)
        return
    from distill import teacher_cmd

    if args.sub == "train":
        teacher_cmd.train_teacher(args.config)
    elif args.sub == "sample":
        teacher_cmd.sample_teacher(
            args.teacher,
            args.steps,
            args.sampler,
            args.seed,
            args.out,
            args.count,
            args.guidance,
            args.data_root,
            args.views_out,
        )
    else:
        teacher_cmd.eval_teacher(
            args.teacher,
            _steps(args.steps),
            args.sampler,
            args.count,
            args.guidance,
            args.out,
            args.data_root,
            split=args.split,
            targets=args.targets,
        )


def _recon(args: argparse.Namespace) -> None:
    from distill import recon_cmd

    if args.sub == "train":
        recon_cmd.train_recon(args.config)
    elif args.sub == "eval":
        recon_cmd.eval_recon(args.recon, args.count, args.out, args.data_root, args.device)
    else:
        recon_cmd.run_recon(args.recon, args.views, args.out, args.renders, args.device)


def _encoder(args: argparse.Namespace) -> None:
    from distill.encoder_cmd import train_encoder

    train_encoder(args.config)


def _metrics(args: argparse.Namespace) -> None:
    from distill.config import load_config
    from eval.calibrate import CalibrateConfig, calibrate

    calibrate(load_config(CalibrateConfig, args.config))


def _train(args: argparse.Namespace) -> None:
    from distill.train_cmd import train_student

    train_student(args.method, args.config, args.teacher)


def _sample(args: argparse.Namespace) -> None:
    from distill.student_eval import sample_student

    sample_student(
        args.student, args.steps, args.seed, args.count, args.out, args.data_root, args.teacher
    )


def _compare(args: argparse.Namespace) -> None:
    from distill.student_eval import compare

    compare(
        [s for s in args.students.split(",") if s],
        _steps(args.steps),
        args.count,
        args.data_root,
        args.out,
        args.teacher,
        args.guidance,
    )


def _sweep(args: argparse.Namespace) -> None:
    from distill.config import load_config
    from eval.sweep import Sweep, SweepConfig

    flags = []
    if args.models:
        flags.append(f"models=[{','.join(args.models.split(','))}]")
    if args.steps:
        flags.append(f"steps=[{','.join(str(s) for s in _steps(args.steps))}]")
    if args.samplers:
        flags.append(f"samplers=[{args.samplers}]")
    if args.out:
        flags.append(f"out={args.out}")
    if args.skip_unsupported:
        flags.append("skip_unsupported=true")
    cfg = load_config(SweepConfig, args.config + flags)
    Sweep(cfg).run()


def _serve(args: argparse.Namespace) -> None:
    from distill.config import load_config
    from serve.app import ServeConfig
    from serve.listen import serve

    flags = [f"students={args.students}"] if args.students else []
    flags += [f"reconstructor={args.reconstructor}"] if args.reconstructor else []
    serve(load_config(ServeConfig, args.config + flags), args.host, args.port)


def _demo(args: argparse.Namespace) -> None:
    from distill.demo import demo

    demo(args.out, args.config)


COMMANDS = {
    "data": _data,
    "bench": _bench,
    "teacher": _teacher,
    "recon": _recon,
    "encoder": _encoder,
    "metrics": _metrics,
    "train": _train,
    "sample": _sample,
    "compare": _compare,
    "sweep": _sweep,
    "serve": _serve,
    "demo": _demo,
}  # command -> its handler


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.cmd](args)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
