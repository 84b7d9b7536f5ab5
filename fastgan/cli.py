"""The `fastgan` command line: info (build facts), bench (op ratio tables)."""
import argparse
import json
import sys


def _cmd_info(args) -> int:
    import fastgan
    facts = fastgan.info()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    for k, v in facts.items():
        if k != "ops":
            print(f"{k:20s} {v}")
    print("ops:")
    for name, kernels in facts["ops"].items():
        print(f"  {name:28s} cpu={'yes' if kernels['cpu'] else 'no':3s} cuda={'yes' if kernels['cuda'] else 'no'}")
    return 0


def _cmd_bench(args) -> int:
    from fastgan import bench
    return bench.main(quick=args.quick, device=args.device, json_path=args.json,
                      families=args.only.split(",") if args.only else None, md_path=args.markdown)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit 2
        sys.stderr.write(f"fastgan: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastgan", description="Fast GAN training in PyTorch")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    pi = sub.add_parser("info", help="what was built and what is available")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pb = sub.add_parser("bench", help="time fastgan's ops against eager PyTorch and torch.compile")
    pb.add_argument("--quick", action="store_true", help="a short run")
    pb.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    pb.add_argument("--json", default=None, help="also write the results to this JSON file")
    pb.add_argument("--markdown", default=None, help="also write a markdown table to this file")
    pb.add_argument("--only", default=None, help="comma-separated op families (default: all)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        return _cmd_info(args)
    if args.cmd == "bench":
        return _cmd_bench(args)
    build_parser().print_help()
    return 0
