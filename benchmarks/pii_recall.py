"""Prints PII recall per kind and the share of look-alikes kept on the
labelled corpus in tests/unit/pii_corpus.py (targets: recall >= 99 % per
kind, look-alikes kept >= 97 %), and lists every miss and damaged snippet.

    python benchmarks/pii_recall.py
    python benchmarks/pii_recall.py --default-region GB
"""
from __future__ import annotations

import argparse
import os
import sys

# The corpus lives in this checkout's tests/; put the checkout first on the
# path, since an installed distribution may ship a top-level ``tests`` package.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.unit import pii_corpus  # noqa: E402
from transforms.pii import PiiRedactor  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--default-region", default="US")
    args = parser.parse_args(argv)
    report = pii_corpus.evaluate(PiiRedactor(b"pii-recall-secret-0123456789", args.default_region))
    print(f"corpus: {len(pii_corpus.PII)} snippets with PII, "
          f"{len(pii_corpus.LOOKALIKES)} look-alikes, "
          f"{len({e.lang for e in pii_corpus.PII + pii_corpus.LOOKALIKES})} languages")
    for line in report.lines():
        print(line)
    for kind, value, output in report.misses:
        print(f"MISSED {kind}: {value!r} in {output!r}")
    for text, output in report.damaged:
        print(f"DAMAGED: {text!r} -> {output!r}")
    met = (all(report.recall(k) >= 0.99 for k in report.planted) and report.kept_share >= 0.97)
    print(f"targets (recall >= 99 % per kind, kept >= 97 %): {'MET' if met else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
