"""The rules engine: rule files, QC and Westgard, acceptance, reagents, autoverification."""
