"""Plain-text summary of a MergeLock verification."""

from __future__ import annotations

from mergesmith.protect.verify import MAX_COLLAPSED_AGREEMENT, VerifyReport


def format_verify(report: VerifyReport) -> str:
    ok = "OK" if report.preserved else "FAILED"
    lines = [
        f"function preserved: {ok}: max |protected - original| output difference {report.max_abs_diff:.3g} "
        f"(outputs up to {report.output_scale:.3g}); attention circuits differ by {report.circuit_preservation:.2e} (relative)",
        f"linear merge (0.5/0.5) with {report.merge_with}:",
        f"  unprotected merge: outputs {report.plain_merge_divergence:.3f} (relative) from the original, top-1 agreement "
        f"{report.plain_merge_agreement:.1%}; attention circuits {report.plain_merge_circuit_divergence:.3f} from the original",
        f"  protected merge:   outputs {report.protected_merge_divergence:.3f} from the unprotected merge, top-1 agreement "
        f"{report.protected_merge_agreement:.1%}; attention circuits {report.protected_merge_circuit_divergence:.3f} from it",
        f"merge collapses: {'yes' if report.collapsed else 'no'} (the protected merge keeps "
        f"{report.protected_merge_agreement:.1%} of the unprotected merge's top-1 outputs; a collapse keeps under "
        f"{MAX_COLLAPSED_AGREEMENT:.0%})",
    ]
    return "\n".join(lines)
