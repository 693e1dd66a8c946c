"""Write the embedded Python-docs SFT dataset to JSONL files (train and held-out).

    python scripts/make_embedded_dataset.py --out data/pydoc_sft.jsonl
    # -> data/pydoc_sft.jsonl (train) and data/pydoc_sft.heldout.jsonl (held-out)

The content depends on the Python version that runs this (its docs differ slightly per release); the
version and a content hash are printed so that a file can be matched to its source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from entropy_reg.data.pydoc_corpus import corpus_fingerprint, embedded_sft_records, python_docs_version


def write_jsonl(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def heldout_path(out: Path) -> Path:
    """``data/x.jsonl`` -> ``data/x.heldout.jsonl``."""
    return out.with_name(f"{out.stem}.heldout{out.suffix or '.jsonl'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/pydoc_sft.jsonl"), help="train JSONL path")
    parser.add_argument("--max-records", type=int, default=None, help="cap per split")
    args = parser.parse_args(argv)
    for split, path in (("train", args.out), ("heldout", heldout_path(args.out))):
        records = embedded_sft_records(max_records=args.max_records, split=split)
        write_jsonl(records, path)
        print(f"{split}: {len(records)} records -> {path}")
    print(f"python docs {python_docs_version()}, train corpus sha256 {corpus_fingerprint('train')[:16]}")


if __name__ == "__main__":
    main()
