"""The long fuzz run: every parser of the receive path, N inputs each.

    scripts/fuzz                          100 000 inputs per parser, every parser
    scripts/fuzz -n 1000000 tcp frag      1 M inputs for the TCP and fragment parsers
    scripts/fuzz --engine hypothesis      hypothesis strategies instead of atheris

Engines: ``atheris`` (coverage-guided libFuzzer, used when it is installed:
``.venv/bin/pip install atheris``) mutates bytes that the harness turns into
frames (tests/unit/fuzzing.py: valid scapy templates, patched for the live
connection, mutated, checksums usually fixed); ``hypothesis`` draws frames
field by field from tests/unit/fuzzstrategies.py. Either way each input goes
through the whole receive path of a stack on the in-memory wire and the
harness checks that nothing raised, INTERNAL_ERROR stayed 0 and a counter
recorded what became of every frame.

Prints one line per parser: inputs, seconds, inputs/s, failures, and the
first failures in full. Exits 1 if any parser failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "unit"))

MAX_REPORTED = 5
# The targets of tests/unit/fuzzing.py, named here so that choosing them does
# not import ustack before atheris can instrument it.
PARSERS = ("arp", "ethernet", "frag", "icmp", "ipv4", "tcp", "udp", "virtio", "vlan")


class Run:
    """Counts inputs and keeps the first distinct failures of one parser."""

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self.inputs = 0
        self.failures = 0
        self.first: dict[str, str] = {}
        self.start = time.perf_counter()

    def failed(self, exc: BaseException, h) -> None:
        self.failures += 1
        text = str(exc)
        key = text.split(" on ")[0][:120]
        if key not in self.first and len(self.first) < MAX_REPORTED:
            self.first[key] = text[:4000]
        # Go on fuzzing: the failure is kept, the counter reset.
        h.b.stats.drop_reasons.pop("INTERNAL_ERROR", None)

    def line(self) -> str:
        secs = time.perf_counter() - self.start
        rate = self.inputs / secs if secs else 0.0
        return (f"{self.name:9s} inputs={self.inputs:>9d} seconds={secs:8.1f} "
                f"inputs/s={rate:8.0f} failures={self.failures}")

    def report(self) -> None:
        print(self.line(), flush=True)
        for text in self.first.values():
            print("    " + text.replace("\n", "\n    "), flush=True)


def run_atheris(name: str, total: int, seed: int, coverage: bool) -> Run:
    import atheris

    if coverage:
        with atheris.instrument_imports(include=["ustack"]):
            import fuzzing
    else:
        import fuzzing
    assert sorted(fuzzing.TARGETS) == list(PARSERS), "scripts/fuzz.py: update PARSERS"
    target = fuzzing.TARGETS[name]
    h = fuzzing.Harness(vnet=target.vnet)
    run = Run(name, total)

    def one_input(data: bytes) -> None:
        run.inputs += 1
        try:
            fuzzing.run_input(h, target, data)
        except fuzzing.FuzzFailure as exc:
            run.failed(exc, h)
        if run.inputs % 100_000 == 0 and run.inputs < total:
            print("  " + run.line(), file=sys.stderr, flush=True)
        if run.inputs >= total:
            h.check_alive()
            run.report()
            # libFuzzer leaves with exit(); the summary is printed already.
            sys.stdout.flush()
            os._exit(1 if run.failures else 0)

    # An input that crashes the harness itself is written to the temp dir, not here.
    prefix = os.path.join(tempfile.gettempdir(), f"ustack-fuzz-{name}-")
    atheris.Setup([sys.argv[0], f"-seed={seed}", "-max_len=256", f"-runs={total + 1}",
                   "-verbosity=0", f"-artifact_prefix={prefix}"],
                  one_input)
    atheris.Fuzz()
    return run


def run_hypothesis(name: str, total: int, seed: int) -> Run:
    import fuzzing
    from fuzzstrategies import STRATEGIES
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    target = fuzzing.TARGETS[name]
    h = fuzzing.Harness(vnet=target.vnet)
    run = Run(name, total)

    @hseed(seed)
    @settings(max_examples=total, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        build = data.draw(STRATEGIES[name])
        run.inputs += 1
        if target.name == "tcp":
            h.ensure_connected()
        try:
            h.feed(build(h))
        except fuzzing.FuzzFailure as exc:
            run.failed(exc, h)
        if run.inputs % 100_000 == 0:
            print("  " + run.line(), file=sys.stderr, flush=True)

    fuzz()
    h.check_alive()
    return run


def main() -> int:
    names = list(PARSERS)
    ap = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("parsers", nargs="*", metavar="PARSER",
                    help=f"parsers to fuzz (default: all): {', '.join(names)}")
    ap.add_argument("-n", "--inputs", type=int, default=100_000, help="inputs per parser")
    ap.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-coverage", action="store_true",
                    help="atheris without instrumenting ustack: blind mutation, several "
                         "times faster")
    args = ap.parse_args()
    bad = [p for p in args.parsers if p not in names]
    if bad:
        print(f"scripts/fuzz: unknown parser {bad[0]!r} (parsers: {', '.join(names)})",
              file=sys.stderr)
        return 2
    if args.inputs < 1:
        print("scripts/fuzz: --inputs must be at least 1", file=sys.stderr)
        return 2
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    elif engine == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("scripts/fuzz: atheris is not installed (.venv/bin/pip install atheris)",
                  file=sys.stderr)
            return 2
    print(f"engine={engine} inputs per parser={args.inputs}", flush=True)
    status = 0
    for name in args.parsers or names:
        if engine == "atheris":
            # libFuzzer owns its process and leaves with exit(): one child per parser.
            pid = os.fork()
            if pid == 0:
                run_atheris(name, args.inputs, args.seed, not args.no_coverage)
                os._exit(3)
            _, code = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(code) != 0:
                status = 1
        else:
            run = run_hypothesis(name, args.inputs, args.seed)
            run.report()
            if run.failures:
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
