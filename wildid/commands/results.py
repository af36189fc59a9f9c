"""`wildid export camtrap-dp` and `wildid review`: what happens to a results table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path



# --- export camtrap-dp ------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from wildid.camtrap import export_camtrap_dp

    summary = export_camtrap_dp(args.results, args.out, utc_offset=args.utc_offset, title=args.title,
                                contributor=args.contributor, empty_threshold=args.empty_threshold,
                                overwrite=args.overwrite)
    print(summary.describe())
    for item in summary.to_fill:
        print(f"to fill in: {item}")
    for note in summary.notes:
        print(f"note: {note}")
    return 0


# --- review ----------------------------------------------------------------------------------
def cmd_review(args: argparse.Namespace) -> int:
    from wildid import review

    results = Path(args.results)
    if args.review_command == "merge":
        out, final = review.write_final(results, args.out)
        sources = final["label_source"].value_counts()
        print(f"wrote {out}: {len(final)} labelled images "
              f"({int(sources.get('manual', 0))} manual, {int(sources.get('auto', 0))} auto)")
    elif args.review_command == "export":
        summary = review.export_training_set(results, args.out, layout=args.layout, include_auto=args.include_auto,
                                             group_by=args.group_by)
        classes = ", ".join(f"{label} {n}" for label, n in sorted(summary.per_class.items()))
        print(f"wrote {summary.out}: {summary.n_images} images ({classes}); labels in {summary.labels_csv}")
        for path in summary.missing:
            print(f"warning: image not found: {path}", file=sys.stderr)
    else:
        metrics = review.review_metrics(review.read_results(results), review.replay_journal(results))
        if not metrics.n_reviewed:
            print(f"reviewed 0 images (journal: {review.journal_path(results)})")
            return 0
        print(f"reviewed {metrics.n_reviewed}: accuracy {metrics.accuracy:.1%} ({metrics.n_correct} correct)")
        if metrics.estimated_accuracy is not None:
            print(f"estimated accuracy over all results (per-bin, weighted): {metrics.estimated_accuracy:.1%}")
        for row in metrics.per_bin.itertuples():
            accuracy = "-" if row.n == 0 else f"{row.accuracy:.1%}"
            print(f"  confidence {row.bin}: {row.n:4d} reviewed, accuracy {accuracy:>6}, {row.share:.0%} of results")
    return 0
